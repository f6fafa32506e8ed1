"""LitServe with dynamic batching (up to 16, 10 ms window), as its docs show for image models.

python litserve_server.py PORT
"""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np
from classifier import Classifier


class ClassifierAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Classifier()

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        upload = request["file"]
        return self.model.preprocess(upload.file.read())

    def batch(self, inputs):  # type: ignore[no-untyped-def]
        return np.stack(inputs)

    def predict(self, batch):  # type: ignore[no-untyped-def]
        return self.model.infer(batch)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return {"top3": output}


if __name__ == "__main__":
    api = ClassifierAPI(max_batch_size=16, batch_timeout=0.01)
    ls.LitServer(api, accelerator="cpu").run(port=int(sys.argv[1]), generate_client_file=False)
