// A chat completion with the official openai SDK for JavaScript.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL ?? "http://localhost:8000/v1",
  apiKey: process.env.OPENAI_API_KEY ?? "unused", // any string when the server has no API_KEYS
});

const reply = await client.chat.completions.create({
  model: "SmolLM2-135M-Instruct",
  messages: [{ role: "user", content: "What is the capital of France?" }],
  temperature: 0,
  max_tokens: 30,
});
console.log(reply.choices[0].message.content);
console.log(`[${reply.usage.prompt_tokens} prompt + ${reply.usage.completion_tokens} completion tokens]`);
