import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from convert import make_class_index
from torch_mobilenets.pretrained.imagenet import decode_predictions, load_class_index

ROOT = Path(__file__).resolve().parents[1]

JSON_PATH = ROOT / "torch_mobilenets" / "data" / "imagenet_class_index.json"
KERAS_MD5 = "c2c37ea517e94d9795004a39431a14cb"


# --- packaged json -----------------------------------------------------------


def test_json_is_keras_form():
    raw = json.loads(JSON_PATH.read_bytes())
    assert list(raw) == [str(i) for i in range(1000)]
    for value in raw.values():
        assert isinstance(value, list) and len(value) == 2
        wnid, name = value
        assert len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()
        assert name and " " not in name
    assert len({v[0] for v in raw.values()}) == 1000


def test_json_bytes_match_keras_md5():
    assert hashlib.md5(JSON_PATH.read_bytes()).hexdigest() == KERAS_MD5


@pytest.mark.parametrize(
    "idx, wnid, name",
    [
        (0, "n01440764", "tench"),
        (1, "n01443537", "goldfish"),
        (281, "n02123045", "tabby"),
        (999, "n15075141", "toilet_tissue"),
        # Keras' duplicated names: the bird and the machine are both "crane",
        # the two swimsuit synsets are both "maillot".
        (134, "n02012849", "crane"),
        (517, "n03126707", "crane"),
        (638, "n03710637", "maillot"),
        (639, "n03710721", "maillot"),
        (477, "n02966687", "carpenter's_kit"),
        (607, "n03590841", "jack-o'-lantern"),
    ],
)
def test_known_entries(idx, wnid, name):
    assert load_class_index()[idx] == (wnid, name)


def test_load_class_index_form_and_cache():
    index = load_class_index()
    assert index is load_class_index()
    assert list(index) == list(range(1000))
    assert all(isinstance(v, tuple) and len(v) == 2 for v in index.values())


# --- generator script --------------------------------------------------------


@pytest.fixture(scope="session")
def timm_wheel(tmp_path_factory):
    script = make_class_index
    cached = os.environ.get("TIMM_WHEEL")
    if cached and Path(cached).is_file():
        return Path(cached)
    dest = tmp_path_factory.mktemp("timm_wheel")
    try:
        return script.download_timm_wheel(dest)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(
            f"cannot obtain timm=={script.TIMM_VERSION} wheel via pip ({exc}); "
            "set TIMM_WHEEL=/path/to/wheel to run this test offline"
        )


def test_generator_reproduces_packaged_json(timm_wheel, tmp_path):
    script = make_class_index
    first = script.render(script.build_class_index(timm_wheel))
    second = script.render(script.build_class_index(timm_wheel))
    assert first == second == JSON_PATH.read_bytes()

    out = tmp_path / "index.json"
    assert script.main(["--timm-wheel", str(timm_wheel), "--out", str(out)]) == 0
    assert out.read_bytes() == JSON_PATH.read_bytes()


# --- decode_predictions ------------------------------------------------------


def _distinct_preds(n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(1000) for _ in range(n)]).astype(dtype) / 1000


def test_decode_predictions_order_top_and_form():
    preds = _distinct_preds(3)
    out = decode_predictions(preds, top=4)
    assert len(out) == 3
    index = load_class_index()
    for row, sample in zip(preds, out):
        assert len(sample) == 4
        expected = np.argsort(-row)[:4]
        assert [(w, n) for w, n, _ in sample] == [index[int(i)] for i in expected]
        scores = [s for _, _, s in sample]
        assert scores == sorted(scores, reverse=True)
        for item in sample:
            assert isinstance(item, tuple) and len(item) == 3
            assert type(item[2]) is float

    assert [len(s) for s in decode_predictions(preds)] == [5, 5, 5]


def test_decode_predictions_one_hot():
    preds = np.zeros((2, 1000), dtype=np.float32)
    preds[0, 281] = 1.0
    preds[1, 999] = 0.5
    out = decode_predictions(preds, top=1)
    assert out == [[("n02123045", "tabby", 1.0)], [("n15075141", "toilet_tissue", 0.5)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_predictions_torch_matches_numpy(dtype):
    tensor = torch.from_numpy(_distinct_preds(2, seed=1)).to(dtype)
    expected = decode_predictions(tensor.float().numpy())
    got = decode_predictions(tensor)
    assert [[t[:2] for t in s] for s in got] == [[t[:2] for t in s] for s in expected]


@pytest.mark.parametrize(
    "preds",
    [
        np.zeros(1000),
        np.zeros((2, 999)),
        np.zeros((1, 1, 1000)),
        torch.zeros(1000),
        torch.zeros(4, 10),
    ],
)
def test_decode_predictions_rejects_bad_shapes(preds):
    with pytest.raises(
        ValueError, match=r"expects a batch of predictions .*Received array with shape"
    ):
        decode_predictions(preds)


_KERAS_SIDE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from keras.applications.imagenet_utils import decode_predictions

    preds = np.load(sys.argv[1])
    out = {}
    for top in (1, 5, 10, 1000):
        out[top] = [[[w, n, float(s)] for w, n, s in sample]
                    for sample in decode_predictions(preds, top=top)]
    json.dump(out, sys.stdout)
    """
)


@pytest.mark.keras
def test_decode_predictions_matches_keras(tmp_path):
    keras_home = tmp_path / "keras_home"
    (keras_home / "models").mkdir(parents=True)
    # Keras only uses a cached copy whose md5 matches, otherwise it would try
    # (and here fail) to download; so this also checks our bytes are Keras'.
    shutil.copy(JSON_PATH, keras_home / "models" / "imagenet_class_index.json")

    preds = _distinct_preds(4, seed=2)
    preds[3, :] = preds[3, :] ** 3  # a differently shaped distribution
    np.save(tmp_path / "preds.npy", preds)

    env = dict(os.environ, KERAS_HOME=str(keras_home), KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, "-c", _KERAS_SIDE, str(tmp_path / "preds.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    keras_out = json.loads(proc.stdout)

    for top in (1, 5, 10, 1000):
        ours = [[list(t) for t in sample] for sample in decode_predictions(preds, top=top)]
        assert ours == keras_out[str(top)]
