// A streamed chat completion with the official openai SDK: tokens are printed as they arrive.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL ?? "http://localhost:8000/v1",
  apiKey: process.env.OPENAI_API_KEY ?? "unused",
});

const stream = await client.chat.completions.create({
  model: "SmolLM2-135M-Instruct",
  messages: [{ role: "user", content: "Tell me a short story about a robot." }],
  temperature: 0,
  max_tokens: 24,
  stream: true,
  stream_options: { include_usage: true }, // a last chunk with the token counts
});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
  if (chunk.usage) {
    console.log(`\n[${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens]`);
  }
}
