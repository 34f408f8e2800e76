"""Asks the local xpu-runner one question through the official OpenAI client."""
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:52415/v1", api_key="unused-without-api-key-file")
model = client.models.list().data[0].id
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name three uses of a local language model."}],
    max_tokens=128,
)
print(reply.choices[0].message.content)
