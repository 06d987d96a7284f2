"""The OpenAI-compatible API of `anyalign serve`, driven by the official `openai` client against a server on
loopback: text and an IMU window (base64 .npy, plain and as a data URL) embed exactly as the space's embedders do;
errors come in OpenAI's shape; the server's bearer token is the API key; /docs and /openapi.json are served."""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from _served_space import mixed_index, running

from anyalign.retrieval import Retriever
from anyalign.retrieval.server import create_app

openai = pytest.importorskip("openai")
TOKEN = "sk-local-test"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    built = mixed_index(tmp_path_factory.mktemp("openai"))
    with running(create_app(Retriever(built["index"]), token=TOKEN)) as port:
        yield {**built, "port": port}
    shutil.rmtree(built["root"], ignore_errors=True)


@pytest.fixture(scope="module")
def client(space):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{space['port']}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def _npy_b64(x: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def test_models(client, space) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["idx", "image", "imu", "text"]  # the space (index folder name), then each query modality
    assert client.models.retrieve("imu").owned_by == "anyalign"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_text_embeddings_match_the_space(client, space) -> None:
    texts = ["a red square", "the black dog", "a photo of a cat"]
    retriever = Retriever(space["index"])
    want = retriever.embedder("text").embed(texts)  # [3, 32]
    got = client.embeddings.create(model="text", input=texts)  # the client asks for base64 by default
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == "text"
    assert np.allclose(np.array([d.embedding for d in got.data]), want, atol=1e-6)
    tok = retriever.embedder("text").encoder.tokenizer
    assert got.usage.prompt_tokens == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) > 0
    as_float = client.embeddings.create(model="text", input="a red square", encoding_format="float")
    assert np.allclose(as_float.data[0].embedding, want[0], atol=1e-6)
    space_model = client.embeddings.create(model="idx", input="the black dog")  # the space routes text to text
    assert np.allclose(space_model.data[0].embedding, want[1], atol=1e-6)
    # the vector is the one /api/search queries with: the top hit's score is the dot product with it
    hit = httpx.post(f"http://127.0.0.1:{space['port']}/api/search", json={"text": "a red square", "k": 1},
                     headers={"authorization": f"Bearer {TOKEN}"}).json()["results"][0]
    vec = np.asarray(retriever.parts[0].index.reconstruct(hit["id"]))
    assert hit["score"] == pytest.approx(float(vec @ want[0]), abs=1e-5)


def test_imu_window_as_base64(client, space) -> None:
    x = np.load(space["imu"] / "window3.npy")  # [6, 100]
    want = Retriever(space["index"]).embedder("imu").embed([x])[0]
    plain = client.embeddings.create(model="imu", input=[_npy_b64(x)])
    assert np.allclose(plain.data[0].embedding, want, atol=1e-5)
    assert plain.usage.prompt_tokens == 0  # media count no tokens
    url = "data:application/x-npy;base64," + _npy_b64(x)
    routed = client.embeddings.create(model="idx", input=["a person running", url])  # text + IMU in one request
    assert np.allclose(routed.data[1].embedding, want, atol=1e-5)
    assert not np.allclose(routed.data[0].embedding, want, atol=1e-3)


def test_errors_in_openai_shape(client, space) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert "models: idx, image, imu, text" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="imu", input=["not base64!"])
    assert "input[0]" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="imu", input=[base64.b64encode(b"\x93NUMPY broken").decode()])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text", input="x", dimensions=8)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{space['port']}/v1", api_key="wrong",
                      max_retries=0).embeddings.create(model="text", input="x")
    url = f"http://127.0.0.1:{space['port']}/v1/embeddings"
    auth = {"authorization": f"Bearer {TOKEN}"}
    for body, status, param in (({"model": "text", "input": []}, 400, "input"),
                                ({"model": "text", "input": [[1, 2, 3]]}, 400, "input"),
                                ({"model": "text", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
                                ({"input": "x"}, 422, None)):
        r = httpx.post(url, json=body, headers=auth)
        err = r.json()["error"]
        assert r.status_code == status and set(err) == {"message", "type", "param", "code"}, r.text
        assert err["type"] == "invalid_request_error" and err["param"] == param and "\n" not in err["message"]
    r = httpx.post(url, json={"model": "text", "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(f"http://127.0.0.1:{space['port']}/api/search", json={"text": ""}, headers=auth)
    assert r.json() == {"error": "empty text query"}  # outside /v1 the server's own shape stays


def test_docs_and_schema(space) -> None:
    base, auth = f"http://127.0.0.1:{space['port']}", {"authorization": f"Bearer {TOKEN}"}
    schema = httpx.get(f"{base}/openapi.json", headers=auth).json()
    assert {"/v1/embeddings", "/v1/models", "/api/search"} <= set(schema["paths"])
    docs = httpx.get(f"{base}/docs", headers=auth)
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "/v1/embeddings" in docs.text and "EmbeddingRequest" in docs.text
    assert "<script" not in docs.text and "cdn" not in docs.text.lower()  # nothing fetched from elsewhere
    assert httpx.get(f"{base}/docs").status_code == 401  # behind the token like the rest of the API
