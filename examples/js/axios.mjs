// A chat completion with axios: a plain POST to /v1/chat/completions, as any HTTP client sends it.
import axios from "axios";

const BASE_URL = process.env.OPENAI_BASE_URL ?? "http://localhost:8000/v1";
const API_KEY = process.env.OPENAI_API_KEY ?? "unused";
const MODEL = process.env.MODEL ?? "SmolLM2-135M-Instruct";

async function chat(messages) {
  const response = await axios.post(
    `${BASE_URL}/chat/completions`,
    { model: MODEL, messages, temperature: 0, max_tokens: 30 },
    {
      headers: {
        "Content-Type": "application/json",
        Authorization: `Bearer ${API_KEY}`,
      },
    },
  );
  return response.data.choices[0].message.content;
}

try {
  console.log(await chat([
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is the capital of France?" },
  ]));
} catch (error) {
  if (error.response) {
    // The server's error envelope: {"error": {"message", "type", "param", "code"}}.
    const { message, code } = error.response.data.error;
    console.error(`${error.response.status} ${code}: ${message}`);
  } else {
    console.error(error.message); // no answer at all (server down, wrong URL)
  }
  process.exitCode = 1;
}
