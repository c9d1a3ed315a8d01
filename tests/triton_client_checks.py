"""Runs NVIDIA's own ``tritonclient[grpc]`` (sync and aio) against a server and prints what it
saw as one JSON document; ``tests/test_triton_client.py`` runs it with .venv-triton's Python
(tritonclient cannot share a process with our generated ``inference`` package) and checks it.

Usage: python triton_client_checks.py HOST:PORT IMAGES.npy OUT.json [--drain]
With --drain it then prints "drain?" and, after a line on stdin, records what a draining
server answers.
"""

import asyncio
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as sync_client
import tritonclient.grpc.aio as aio_client
from tritonclient.utils import InferenceServerException


def images_input(module, images: np.ndarray, datatype: str = "UINT8", name: str = "images"):
    tensor = module.InferInput(name, list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    return tensor


def answer(result, names=("probabilities", "label")) -> dict:
    found = {}
    for name in names:
        array = result.as_numpy(name)
        if array is None:
            continue
        if array.dtype == object:
            found[name] = [[entry.decode() for entry in row] for row in array.tolist()]
        else:
            found[name] = array.tolist()
    response = result.get_response()
    found["model_name"], found["model_version"], found["id"] = (
        response.model_name, response.model_version, response.id)
    return found


def refusal(call) -> dict:
    try:
        call()
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": error.message()}
    return {"status": "OK"}


def sync_checks(target: str, images: np.ndarray) -> dict:
    client = sync_client.InferenceServerClient(target)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mlp"),
        "unknown_model_ready": refusal(lambda: client.is_model_ready("nope")),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata("mlp", as_json=True),
        "model_config": client.get_model_config("mlp", as_json=True),
        "infer": {},
    }
    for model, version in (("mlp", ""), ("mlp", "1"), ("softmax", ""), ("baseline", "")):
        result = client.infer(model, [images_input(sync_client, images)], model_version=version,
                              request_id=f"{model}-{version}")
        out["infer"][f"{model}:{version}"] = answer(result)
    only_label = client.infer("mlp", [images_input(sync_client, images)],
                              outputs=[sync_client.InferRequestedOutput("label")])
    out["only_label"] = answer(only_label)
    out["only_label"]["output_names"] = [o.name for o in only_label.get_response().outputs]
    classified = client.infer("mlp", [images_input(sync_client, images)], outputs=[
        sync_client.InferRequestedOutput("probabilities", class_count=3)])
    out["classification"] = answer(classified)
    out["statistics"] = client.get_inference_statistics("mlp", as_json=True)
    streamed = queue.Queue()  # ModelStreamInfer: answers in order, a refusal in its place
    client.start_stream(lambda result, error: streamed.put((result, error)))
    for request_id, model in (("s1", "mlp"), ("s2", "nope"), ("s3", "softmax")):
        client.async_stream_infer(model, [images_input(sync_client, images)],
                                  request_id=request_id)
    out["stream"] = [answer(result) if error is None else {"error": error.message()}
                     for result, error in (streamed.get(timeout=30) for _ in range(3))]
    client.stop_stream()

    def infer(model="mlp", tensors=None, version="", outputs=None):
        tensors = tensors or [images_input(sync_client, images)]
        return lambda: client.infer(model, tensors, model_version=version, outputs=outputs)

    out["errors"] = {
        "unknown model": refusal(infer(model="nope")),
        "unknown version": refusal(infer(version="9")),
        "bad version": refusal(infer(version="latest")),
        "wrong datatype": refusal(infer(tensors=[
            images_input(sync_client, images.astype(np.float32), "FP32")])),
        "wrong shape": refusal(infer(tensors=[
            images_input(sync_client, images.reshape(len(images), 784))])),
        "wrong input name": refusal(infer(tensors=[
            images_input(sync_client, images, name="pixels")])),
        "empty batch": refusal(infer(tensors=[
            images_input(sync_client, images[:0])])),
        "batch over the limit": refusal(infer(tensors=[
            images_input(sync_client, np.concatenate([images] * 3))])),
        "unknown output": refusal(infer(outputs=[sync_client.InferRequestedOutput("logits")])),
        "classification of label": refusal(infer(outputs=[
            sync_client.InferRequestedOutput("label", class_count=2)])),
        "metadata of unknown model": refusal(lambda: client.get_model_metadata("nope")),
        "config of unknown model": refusal(lambda: client.get_model_config("nope")),
        "statistics of unknown version": refusal(
            lambda: client.get_inference_statistics("mlp", "9")),
    }
    client.close()
    return out


async def aio_checks(target: str, images: np.ndarray) -> dict:
    client = aio_client.InferenceServerClient(target)
    try:
        result = await client.infer("mlp", [images_input(aio_client, images)])
        metadata = await client.get_model_metadata("softmax", as_json=True)
        try:
            await client.infer("nope", [images_input(aio_client, images)])
            unknown = {"status": "OK"}
        except InferenceServerException as error:
            unknown = {"status": str(error.status()), "message": error.message()}
        return {"live": await client.is_server_live(), "infer": answer(result),
                "model_metadata": metadata, "unknown model": unknown}
    finally:
        await client.close()


def main() -> None:
    target, images_path, out_path = sys.argv[1:4]
    images = np.load(images_path)
    out = {"sync": sync_checks(target, images),
           "aio": asyncio.run(aio_checks(target, images))}
    if "--drain" in sys.argv:
        print("drain?", flush=True)
        sys.stdin.readline()
        client = sync_client.InferenceServerClient(target)
        out["draining"] = refusal(
            lambda: client.infer("mlp", [images_input(sync_client, images)]))
    with open(out_path, "w") as file:
        json.dump(out, file)


if __name__ == "__main__":
    main()
