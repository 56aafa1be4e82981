"""BasicSR <-> Flax weight conversion: round trips, inferred configs, errors, the CLI and file formats."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from golden_weights import PTH_EDVR_CONFIG, VARIANTS, pth_state_dict, synthetic_state_dict

from edvr_jax import EDVR
from edvr_jax.weights import load_weights
from edvr_jax.convert import (ConversionError, basicsr_shapes, from_basicsr, infer_config, read_state_dict, to_basicsr,
                              torch_key, unwrap_checkpoint)
from edvr_jax.convert.__main__ import main


@pytest.fixture(scope="module")
def sd_m():
    return synthetic_state_dict(basicsr_shapes(EDVR()))


def test_key_names_follow_basicsr():
    assert torch_key(("pcd_align", "dcn_pack_l1", "conv_offset", "kernel")) == "pcd_align.dcn_pack.l1.conv_offset.weight"
    assert torch_key(("pcd_align", "offset_conv3_l2", "bias")) == "pcd_align.offset_conv3.l2.bias"
    assert torch_key(("pcd_align", "cas_dcnpack", "kernel")) == "pcd_align.cas_dcnpack.weight"
    assert torch_key(("feature_extraction_4", "conv2", "kernel")) == "feature_extraction.4.conv2.weight"
    assert torch_key(("predeblur", "resblock_l1_3", "conv1", "bias")) == "predeblur.resblock_l1.3.conv1.bias"
    assert torch_key(("predeblur", "resblock_l2_1", "conv1", "bias")) == "predeblur.resblock_l2_1.conv1.bias"
    assert torch_key(("fusion", "spatial_attn_l2", "kernel")) == "fusion.spatial_attn_l2.weight"
    assert torch_key(("conv_l2_1", "kernel")) == "conv_l2_1.weight"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_keys_and_shapes_equal_basicsr_state_dict(goldens, name):
    """BasicSR's own model.state_dict() keys and shapes, recorded by tools/make_basicsr_goldens.py."""
    basicsr = json.loads(str(goldens["meta"]))["state_dict_shapes"][name]
    ours = basicsr_shapes(EDVR(**VARIANTS[name]["config"]))
    assert {k: list(v) for k, v in ours.items()} == basicsr


def test_edvr_m_key_examples():
    for key, shape in {"conv_first.weight": (64, 3, 3, 3), "pcd_align.dcn_pack.l3.weight": (64, 64, 3, 3),
                       "pcd_align.dcn_pack.l3.conv_offset.weight": (216, 64, 3, 3),
                       "fusion.feat_fusion.weight": (64, 320, 1, 1), "upconv2.weight": (256, 64, 3, 3),
                       "conv_last.bias": (3,), "reconstruction.9.conv2.weight": (64, 64, 3, 3)}.items():
        assert basicsr_shapes(EDVR())[key] == shape


@pytest.mark.parametrize("name", ["edvr_m", "edvr_l_deblur", "edvr_m_wo_tsa"])
def test_round_trip_is_exact(name):
    model = EDVR(**VARIANTS[name]["config"])
    sd = synthetic_state_dict(basicsr_shapes(model))
    variables = from_basicsr(sd, model)
    # from_basicsr output is exactly what apply takes: same tree structure and shapes as init
    init_shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros(model.input_shape(1, 16, 16), np.float32))
    assert jax.tree.structure(init_shapes) == jax.tree.structure(variables)
    assert jax.tree.map(lambda a: a.shape, init_shapes) == jax.tree.map(np.shape, variables)
    back = to_basicsr(variables)
    assert back.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    # A conv weight really is transposed [O, I, kh, kw] -> [kh, kw, I, O].
    np.testing.assert_array_equal(variables["params"]["conv_l2_1"]["kernel"][1, 2, 5, 7],
                                  sd["conv_l2_1.weight"][7, 5, 1, 2])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_infer_config(name):
    model = EDVR(**VARIANTS[name]["config"])
    cfg = infer_config(basicsr_shapes(model) and synthetic_state_dict(basicsr_shapes(model)))
    expected = {**model.config(), "center_frame_idx": None}
    assert cfg == expected


def test_bad_keys_and_shapes_are_named(sd_m):
    bad = dict(sd_m, **{"pcd_align.dcn_pack.l4.weight": np.zeros((64, 64, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected keys \['pcd_align.dcn_pack.l4.weight'\]"):
        from_basicsr(bad, EDVR())
    missing = {k: v for k, v in sd_m.items() if k != "fusion.spatial_attn3.bias"}
    with pytest.raises(ConversionError, match=r"missing keys \['fusion.spatial_attn3.bias'\]"):
        from_basicsr(missing, EDVR())
    wrong = dict(sd_m, **{"upconv1.weight": np.zeros((256, 64, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"upconv1.weight: shape \(256, 64, 1, 1\) does not match .*\(256, 64, 3, 3\)"):
        from_basicsr(wrong, EDVR())
    with pytest.raises(ConversionError, match="conv_l2_1.weight.*is missing"):
        from_basicsr({"foo.weight": np.zeros(3)})
    # An EDVR-M state dict offered to EDVR-L
    with pytest.raises(ConversionError, match="does not match the model's"):
        from_basicsr(sd_m, EDVR(num_feat=128, num_reconstruct_block=10))


def test_unwrap_checkpoint(sd_m):
    assert unwrap_checkpoint({"params": sd_m}).keys() == sd_m.keys()
    assert unwrap_checkpoint({"params_ema": sd_m}).keys() == sd_m.keys()
    assert unwrap_checkpoint({"params": sd_m, "params_ema": {}}, key="params_ema") == {}
    prefixed = {"module." + k: v for k, v in sd_m.items()}
    assert unwrap_checkpoint({"params": prefixed}).keys() == sd_m.keys()
    with pytest.raises(ConversionError, match="no 'params_ema' entry"):
        unwrap_checkpoint({"params": sd_m}, key="params_ema")
    with pytest.raises(ConversionError, match="neither 'params' nor 'params_ema'"):
        unwrap_checkpoint({"iter": 5, "optimizers": []})


def test_cli_safetensors_to_orbax(tmp_path, goldens, capsys):
    from safetensors.numpy import save_file
    name = "edvr_m_7f_center1"
    cfg = VARIANTS[name]["config"]
    sd = synthetic_state_dict(basicsr_shapes(EDVR(**cfg)))
    src = tmp_path / "edvr.safetensors"
    save_file(sd, str(src))
    out = tmp_path / "converted"
    assert main([str(src), str(out), "--center-frame-idx", "1"]) == 0
    assert "3,316,515 parameters" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["config"]["center_frame_idx"] == 1
    model, params = load_weights(out)
    variables = {"params": params}
    assert model.config() == EDVR(**cfg).config()
    x = np.transpose(goldens[f"{name}/x"], (0, 1, 3, 4, 2))
    ref = np.transpose(goldens[f"{name}/y"], (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(variables, x)), ref, rtol=1e-4, atol=1e-4)

    # Refuses to overwrite, names bad files.
    assert main([str(src), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.pth"), str(tmp_path / "o2")]) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main([str(tmp_path / "weights.bin"), str(tmp_path / "o3")]) == 2
    assert "unknown checkpoint type '.bin'" in capsys.readouterr().err


PTH = Path(__file__).parent / "data" / "pth"


def test_a_basicsr_pth_converts_and_loads_on_every_path_without_torch(tmp_path, capsys):
    """tests/data/pth/basicsr_edvr.pth, written by torch as BasicSR's save_network writes (params and
    params_ema), read by edvr_jax.pth: the convert CLI, read_state_dict (params_ema with its key),
    edvr_jax.load (eval.py, the restore CLI) and train.py's init_from all give its weights, in the
    model's tree."""
    from edvr_jax import load
    from edvr_jax.weights import abstract_params, load_params_non_strict

    src = PTH / "basicsr_edvr.pth"
    model = EDVR(**PTH_EDVR_CONFIG)
    want = from_basicsr(pth_state_dict(basicsr_shapes(model), 0), model)["params"]
    assert main([str(src), str(tmp_path / "out")]) == 0
    assert "94,627 parameters" in capsys.readouterr().out
    got_model, params = load_weights(tmp_path / "out")
    assert got_model == model
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, abstract_params(model))
    jax.tree.map(np.testing.assert_array_equal, params, want)
    ema = read_state_dict(src, key="params_ema")  # what --key params_ema converts
    assert ema.keys() == basicsr_shapes(model).keys()
    for k, v in pth_state_dict(basicsr_shapes(model), 1).items():
        np.testing.assert_array_equal(ema[k], v, err_msg=k)
    restorer = load(src)
    assert restorer.model == model
    jax.tree.map(np.testing.assert_array_equal, restorer.params, want)
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(EDVR(**PTH_EDVR_CONFIG, num_frame=3)))
    params, report = load_params_non_strict(src, target)  # init_from: a 3-frame model takes all but the fusion
    assert report["shape_mismatch"] == ["fusion/kernel"] and report["loaded"] == 67
    np.testing.assert_array_equal(params["conv_first"]["kernel"], want["conv_first"]["kernel"])
    assert not np.any(params["fusion"]["kernel"])


def test_cli_refuses_a_pth_that_would_run_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([str(PTH / "unsafe_reduce_os_system.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unsafe_reduce_os_system.pth: refused to unpickle the global 'posix.system' (nothing was run)" in err
    assert err.count("\n") == 1 and not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
