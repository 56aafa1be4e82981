"""edvr_jax.pth: PyTorch checkpoints read without torch, against fixtures torch wrote
(tools/make_pth_fixtures.py) and, where torch is installed, against torch.load itself."""

import collections
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from golden_weights import PTH_EDVR_CONFIG, pth_state_dict

from edvr_jax import EDVR
from edvr_jax.convert import basicsr_shapes
from edvr_jax.pth import PthError, UnsafePickleError, read_pth

PTH = Path(__file__).parent / "data" / "pth"


def _compare(got: np.ndarray, want: np.ndarray, dtype: str, name: str):
    assert got.dtype.name == dtype, name
    assert got.shape == want.shape, name
    if dtype == "bfloat16":  # stored beside the fixture as its bits
        got = got.view(np.uint16)
    np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("name", ["tensors.pth", "tensors_legacy.pth"])
def test_tensors_equal_what_torch_read(name):
    """Offsets, strides (transposed, permuted, stride 0), views of one storage, 0-d and empty
    tensors, every dtype, a Parameter: each array equals the tensor torch.load gave."""
    got = read_pth(PTH / name)
    with np.load(PTH / "tensors.npz") as f:
        want = {k: f[k] for k in f.files}
    dtypes = json.loads(str(want.pop("dtypes")))
    for key, dtype in dtypes.items():
        top, _, index = key.partition("/")
        _compare(got[top][int(index)] if index else got[top], want[key], dtype, key)
    assert len(dtypes) == 21 and dtypes["bfloat16"] == "bfloat16" and dtypes["float16"] == "float16"
    # Hand-checked values: base is linspace(-3, 3, 60); 'step' is base[2::3]; 'transposed' base[20:40] as 4x5, .t()
    base = np.linspace(-3, 3, 60)
    np.testing.assert_allclose(got["step"], base[2::3], atol=1e-6)
    np.testing.assert_allclose(got["transposed"], base[20:40].reshape(4, 5).T, atol=1e-6)
    np.testing.assert_array_equal(got["expanded"], np.broadcast_to(got["base"][:4], (3, 4)))
    assert got["again"] is got["base"]  # one tensor stored twice is one object, as torch gives it
    assert got["plain"] == {"iter": 5, "name": "edvr", "lr": [4e-4, 1e-7], "flags": (True, None)}
    # Views of one storage are separate arrays: writing one leaves the other alone.
    a, b = got["shared"]
    b[...] = 0
    assert a.flags.writeable and np.all(a == want["shared/0"])


def test_big_endian_archive():
    got = read_pth(PTH / "big_endian.pth")
    np.testing.assert_array_equal(got["x"], np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1)
    np.testing.assert_array_equal(got["y"], np.array([-3, -1, 1, 3], np.int16))
    assert got["y"].dtype == np.int16


def test_basicsr_checkpoint_with_params_and_params_ema():
    """BasicSR's save_network format: {'params': state_dict, 'params_ema': state_dict}, each a
    module's state_dict() (an OrderedDict), float32, values known from their seeds."""
    got = read_pth(PTH / "basicsr_edvr.pth")
    shapes = basicsr_shapes(EDVR(**PTH_EDVR_CONFIG))
    assert list(got) == ["params", "params_ema"]
    for key, seed in (("params", 0), ("params_ema", 1)):
        assert isinstance(got[key], collections.OrderedDict) and sorted(got[key]) == sorted(shapes)
        want = pth_state_dict(shapes, seed)
        for k, v in got[key].items():
            assert v.dtype == np.float32 and v.shape == tuple(shapes[k]), k
            np.testing.assert_array_equal(v, want[k], err_msg=k)


@pytest.mark.parametrize("name,culprit", [
    ("unsafe_reduce_os_system.pth", "posix.system"),  # os.system, as Python pickles it on Linux
    ("unsafe_builtins_eval.pth", "builtins.eval"),
    ("unsafe_exec_stack_global.pth", "builtins.exec"),
    ("unsafe_legacy_os_system.pth", "posix.system"),
    ("unsafe_legacy_magic.pth", "posix.system"),
])
def test_a_pickle_that_would_run_code_is_refused_naming_the_global(name, culprit, tmp_path, monkeypatch):
    """Each payload creates ./pwned when unpickled; it is refused by name and the file never appears."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickleError, match=rf"{name}: refused to unpickle the global '{culprit}' \(nothing"):
        read_pth(PTH / name)
    assert not (tmp_path / "pwned").exists()


def _tensor_pickle(size, stride, offset, numel, view: bytes | None = None):
    """data.pkl of ``{'x': tensor}`` written opcode by opcode as torch.save writes it (protocol 2):
    a tensor on storage '0' (float32, 'cpu'). ``view``: the legacy format's sixth persistent-id
    entry (``b"N"``: none; ``b"(X...K.K.t"``: a view of the storage)."""
    ints = lambda xs: b"(" + b"".join(b"K" + bytes([v]) for v in xs) + b"t"  # noqa: E731
    return (b"\x80\x02}X\x01\x00\x00\x00xctorch._utils\n_rebuild_tensor_v2\n(("
            b"X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK" + bytes([numel])
            + (view or b"") + b"tQK" + bytes([offset]) + ints(size) + ints(stride)
            + b"\x89ccollections\nOrderedDict\n)RtRs.")


def _archive(path: Path, pkl: bytes, storage: bytes | None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", pkl)
        z.writestr("x/byteorder", "little")
        z.writestr("x/version", "3\n")
        if storage is not None:
            z.writestr("x/data/0", storage)
    return path


VIEW_1_OF_0 = b"(X\x01\x00\x00\x001K\x02K\x03t"  # legacy view entry: storage '1' is elements 2, 3, 4 of '0'


def _legacy(path: Path, pkl: bytes, storage: bytes) -> Path:
    """torch < 1.6's stream: magic number, protocol, sys_info, the object, storage keys, then each
    storage as an int64 element count and its bytes."""
    head = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
            pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)]
    path.write_bytes(b"".join(head) + pkl + pickle.dumps(["0"], protocol=2)
                     + struct.pack("<q", len(storage) // 4) + storage)
    return path


def test_crafted_archives(tmp_path):
    """The opcodes above read as torch's; bad sizes, strides and records are errors naming the file,
    never a read outside the storage."""
    four = np.arange(4, dtype="<f4").tobytes()
    ok = read_pth(_archive(tmp_path / "ok.pth", _tensor_pickle((2, 2), (1, 2), 0, 4), four))
    np.testing.assert_array_equal(ok["x"], [[0, 2], [1, 3]])
    for name, pkl, storage, message in [
        ("far.pth", _tensor_pickle((2, 2), (3, 1), 0, 4), four, r"reaches element 4 of storage '0', which has 4"),
        ("offset.pth", _tensor_pickle((3,), (1,), 2, 4), four, r"reaches element 4"),
        ("short.pth", _tensor_pickle((2,), (1,), 0, 4), four[:12], r"x/data/0: 12 bytes, 4 elements of 4 bytes"),
        ("missing.pth", _tensor_pickle((2,), (1,), 0, 4), None, r"storage '0': no record x/data/0"),
        ("build.pth", b"\x80\x02ccollections\nOrderedDict\n}b.", None, r"a BUILD opcode on collections.OrderedDict"),
        ("pid.pth", b"\x80\x02X\x03\x00\x00\x00abcQ.", None, r"unexpected persistent id abc"),
    ]:
        with pytest.raises(PthError, match=rf"{name}: not a readable PyTorch checkpoint .*{message}"):
            read_pth(_archive(tmp_path / name, pkl, storage))
    with pytest.raises(UnsafePickleError, match=r"'torch.Tensor'"):  # allowed by torch, not needed for weights
        read_pth(_archive(tmp_path / "cls.pth", b"\x80\x02ctorch\nTensor\n.", None))


def test_crafted_legacy_streams(tmp_path):
    """torch < 1.6's format, including a tensor on a storage view (torch < 1.0 wrote those)."""
    six = np.arange(6, dtype="<f4").tobytes()
    got = read_pth(_legacy(tmp_path / "root.pth", _tensor_pickle((2, 3), (1, 2), 0, 6, view=b"N"), six))
    np.testing.assert_array_equal(got["x"], [[0, 2, 4], [1, 3, 5]])
    view = VIEW_1_OF_0
    got = read_pth(_legacy(tmp_path / "view.pth", _tensor_pickle((2,), (1,), 1, 6, view=view), six))
    np.testing.assert_array_equal(got["x"], [3, 4])
    with pytest.raises(PthError, match=r"far.pth: .*reaches element 3 of storage '1', which has 3"):
        read_pth(_legacy(tmp_path / "far.pth", _tensor_pickle((2,), (1,), 2, 6, view=view), six))
    with pytest.raises(PthError, match=r"long.pth: .*storage view '1': 3 elements from 4 of 6"):
        long_view = view.replace(b"K\x02K", b"K\x04K")  # elements 4, 5, 6 of 6
        read_pth(_legacy(tmp_path / "long.pth", _tensor_pickle((2,), (1,), 0, 6, view=long_view), six))
    with pytest.raises(PthError, match=r"short.pth: .*storage '0': 5 elements on disk, 6 expected"):
        read_pth(_legacy(tmp_path / "short.pth", _tensor_pickle((2,), (1,), 0, 6, view=b"N"), six[:20]))


def test_damaged_files_are_named(tmp_path):
    for fixture, cut in (("tensors.pth", 2000), ("tensors_legacy.pth", 3000), ("tensors_legacy.pth", 100)):
        path = tmp_path / f"cut_{cut}_{fixture}"
        path.write_bytes((PTH / fixture).read_bytes()[:cut])
        with pytest.raises(PthError, match=rf"{path.name}: not a readable PyTorch checkpoint"):
            read_pth(path)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(PthError, match="text.pth: not a readable PyTorch checkpoint"):
        read_pth(tmp_path / "text.pth")


# --- against torch itself (only where torch is installed: not a dependency) ----------------------

def _random_tensors(torch, rng: np.random.Generator) -> dict:
    """Views of random storages: offsets, steps, transposes, permutes, broadcasts, several dtypes."""
    out = {}
    for i in range(24):
        dtype = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                 torch.int8, torch.uint8, torch.bool][i % 9]
        n = int(rng.integers(24, 200))
        base = torch.from_numpy(rng.standard_normal(n) * 50).to(dtype)
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        start = int(rng.integers(0, n - int(np.prod(shape)) * 2 + 1))
        t = base[start:start + 2 * int(np.prod(shape))][::2].view(shape)
        t = [t, t.permute(2, 0, 1), t.transpose(0, 2)[:, 1:], t[:, :1].expand(shape), t[..., -1]][i % 5]
        out[f"t{i}"] = t
        if i % 4 == 0:
            out[f"t{i}_same_storage"] = base[::3]
    return out


@pytest.mark.parametrize("legacy", [False, True])
def test_equals_torch_load_on_random_files(legacy, tmp_path):
    torch = pytest.importorskip("torch")
    for seed in range(3):
        tensors = _random_tensors(torch, np.random.default_rng(seed))
        path = tmp_path / f"r{seed}.pth"
        torch.save({"params": tensors, "params_ema": collections.OrderedDict(w=tensors["t1"])}, path,
                   _use_new_zipfile_serialization=not legacy)
        ref, got = torch.load(path, weights_only=True), read_pth(path)
        assert list(got["params"]) == list(ref["params"])
        for k, t in ref["params"].items():
            want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
            assert str(t.dtype) == f"torch.{got['params'][k].dtype.name}", k
            np.testing.assert_array_equal(got["params"][k].astype(want.dtype), want, err_msg=k)
        np.testing.assert_array_equal(got["params_ema"]["w"], ref["params_ema"]["w"].numpy())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_torch_refuses_the_unsafe_fixtures_and_reads_the_others_alike(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import pickle

    monkeypatch.chdir(tmp_path)
    for path in sorted(PTH.glob("unsafe_*.pth")):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
    assert not (tmp_path / "pwned").exists()
    ref = torch.load(PTH / "basicsr_edvr.pth", weights_only=True)
    got = read_pth(PTH / "basicsr_edvr.pth")
    for key in ("params", "params_ema"):
        for k, t in ref[key].items():
            np.testing.assert_array_equal(got[key][k], t.numpy(), err_msg=k)
    np.testing.assert_array_equal(read_pth(PTH / "big_endian.pth")["x"],
                                  torch.load(PTH / "big_endian.pth", weights_only=True)["x"].numpy())
    # The hand-written files of the tests above read the same in torch.
    six = np.arange(6, dtype="<f4").tobytes()
    for path in (_archive(tmp_path / "zip.pth", _tensor_pickle((2, 2), (1, 2), 1, 6), six),
                 _legacy(tmp_path / "root.pth", _tensor_pickle((2, 3), (1, 2), 0, 6, view=b"N"), six),
                 _legacy(tmp_path / "view.pth", _tensor_pickle((2,), (1,), 1, 6, view=VIEW_1_OF_0), six)):
        np.testing.assert_array_equal(read_pth(path)["x"], torch.load(path, weights_only=True)["x"].numpy())
