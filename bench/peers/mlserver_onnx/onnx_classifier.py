"""MLServer runtime serving the project's ONNX classifier, the usual way to put ONNX in MLServer.

MLServer 1.7 ships no ONNX runtime, so this custom MLModel holds one onnxruntime session.
The model file comes from ``parameters.uri`` (set by MLSERVER_MODEL_URI in bench/peers/serve.sh).
"""

import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            await get_model_uri(self._settings), options, providers=["CPUExecutionProvider"]
        )
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        results = self._session.run(None, {"images": images})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, value)
                     for name, value in zip(self._output_names, results, strict=True)],
        )
