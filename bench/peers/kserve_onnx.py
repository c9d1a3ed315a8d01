"""KServe 0.21 Python ModelServer serving the project's ONNX classifier over the v2 protocol.

The usual way to put a custom ONNX model into KServe's Python server: a ``kserve.Model``
subclass holding one onnxruntime session. Per-request logging is off (by default KServe
logs two lines per request, which would be measured too). KServe binds every interface
(it has no host option): send load only to 127.0.0.1.

Usage (inside the kserve venv): python kserve_onnx.py --model_file M.onnx --grpc_port 8091
"""

import argparse
import logging

import kserve
import onnxruntime
from kserve import InferOutput, InferRequest, InferResponse, model_server

NUMPY_TO_V2 = {"float32": "FP32", "int64": "INT64"}


class OnnxClassifier(kserve.Model):
    def __init__(self, name: str, model_file: str):
        super().__init__(name)
        self._model_file = model_file
        self._session = None

    def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            self._model_file, options, providers=["CPUExecutionProvider"]
        )
        self._output_names = [output.name for output in self._session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        images = payload.inputs[0].as_numpy()
        outputs = []
        for name, value in zip(self._output_names, self._session.run(None, {"images": images}),
                               strict=True):
            output = InferOutput(name, list(value.shape), NUMPY_TO_V2[str(value.dtype)])
            output.set_data_from_numpy(value, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_file", required=True, help="the ONNX classifier to serve")
    args, _ = parser.parse_known_args()
    logging.getLogger().setLevel(logging.WARNING)
    model = OnnxClassifier(args.model_name or "mlp", args.model_file)
    model.load()
    server = kserve.ModelServer(
        grpc_port=args.grpc_port, http_port=args.http_port, enable_latency_logging=False
    )
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
