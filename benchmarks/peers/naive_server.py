"""The server a user writes first: FastAPI, one request → decode → one batch-1 inference → top-3.

python naive_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from classifier import Classifier
from fastapi import FastAPI, UploadFile

model = Classifier()
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile) -> dict[str, object]:
    data = await file.read()

    def work() -> dict[str, object]:
        return {"top3": model.infer(model.preprocess(data)[None])[0]}

    return await asyncio.to_thread(work)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False)
