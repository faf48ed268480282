"""Export: vLLM's EAGLE-3 and EAGLE-1 layouts, their key/shape checks, and the HF round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from draft_models.eagle3 import Eagle3Config
from draft_models.eagle3 import vllm_spec as vllm_eagle3_spec
from specforge.errors import SpecforgeError
from specforge.export import check_vllm, check_vllm_eagle3, export_hf, export_vllm, load_draft
from tests.helpers import small_eagle3, small_eagle3_config, write_draft_run

V, VD, H = 60, 24, 32


def _cfg() -> Eagle3Config:
    return small_eagle3_config(H, V, VD, head_dim=16)


@pytest.fixture
def run_dir(tmp_path):
    d = small_eagle3(_cfg(), list(range(0, V, 2)))
    return write_draft_run(tmp_path / "run", d)


def test_vllm_export_layout(run_dir, tmp_path):
    out = export_vllm(run_dir, tmp_path / "vllm")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] == VD and cfg["vocab_size"] == V and cfg["target_hidden_size"] == H
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]
    tensors = load_file(out / "model.safetensors")
    assert set(tensors) == set(vllm_eagle3_spec(_cfg()))
    assert "embed_tokens.weight" not in tensors and tensors["d2t"].dtype == torch.int64
    # d2t offsets reproduce the chosen target ids.
    assert (torch.arange(VD) + tensors["d2t"]).tolist() == list(range(0, 2 * VD, 2))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no staging folder left


def _good(run_dir, tmp_path):
    return load_file(export_vllm(run_dir, tmp_path / "v") / "model.safetensors")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.pop("fc.weight"), "missing tensor fc.weight"),
        (lambda t: t.__setitem__("extra.weight", torch.zeros(1)), "unexpected tensor extra.weight"),
        (
            lambda t: t.__setitem__("fc.weight", torch.zeros(H, 2 * H)),
            r"fc.weight has shape \(32, 64\), expected \(32, 96\)",
        ),
        (lambda t: t.__setitem__("lm_head.weight", torch.zeros(V, H)), "lm_head.weight has shape"),
        (lambda t: t.__setitem__("d2t", t["d2t"].to(torch.int32)), "d2t has dtype torch.int32"),
        (lambda t: t.__setitem__("d2t", torch.full((VD,), V)), "outside the target vocabulary"),
        (lambda t: t.__setitem__("d2t", -torch.arange(VD)), "same target id"),
        (lambda t: t["norm.weight"].__setitem__(0, float("nan")), "norm.weight holds NaN"),
    ],
)
def test_key_check_failure_modes(run_dir, tmp_path, mutate, message):
    tensors = _good(run_dir, tmp_path)
    check_vllm_eagle3(tensors, _cfg())  # the real export passes
    mutate(tensors)
    with pytest.raises(SpecforgeError, match=message):
        check_vllm_eagle3(tensors, _cfg())


def test_export_refuses_a_broken_run_and_writes_nothing(run_dir, tmp_path):
    state = load_file(run_dir / "draft.safetensors")
    state["midlayer.self_attn.q_proj.weight"] = state["midlayer.self_attn.q_proj.weight"][:, :H].contiguous()
    save_file(state, str(run_dir / "draft.safetensors"))
    with pytest.raises(SpecforgeError, match="q_proj.weight has shape"):
        export_vllm(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_runs(tmp_path, run_dir):
    with pytest.raises(SpecforgeError, match="not a finished training run"):
        export_vllm(tmp_path / "nothing", tmp_path / "o")
    (run_dir / "draft.safetensors").write_bytes(b"junk")
    with pytest.raises(SpecforgeError, match="corrupt"):
        export_vllm(run_dir, tmp_path / "o")


def test_hf_round_trip(run_dir, tmp_path):
    out = export_hf(run_dir, tmp_path / "hf")
    emb = torch.randn(V, H)
    d = load_draft(out, emb)
    ref = load_file(run_dir / "draft.safetensors")
    for k, v in d.state_dict().items():
        if k == "embed_tokens.weight":
            assert torch.equal(v, emb)
        else:
            assert torch.equal(v, ref[k]), k


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_export_never_deletes_what_it_did_not_write(run_dir, tmp_path, capsys):
    """--out at the run itself or at a folder holding other work is refused (exit 2, one line) and
    left as it was; --force writes the export's files beside the others; a re-export into a previous
    export replaces only what the previous export wrote."""
    from specforge.cli import main

    before = _files(run_dir)
    for out in (run_dir, tmp_path):  # the run itself; its parent, with the run and other files in it
        (tmp_path / "notes.txt").write_text("mine")
        rc = main(["export", "--run", str(run_dir), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "not empty" in err and "--force" in err
        assert _files(run_dir) == before and (tmp_path / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    assert main(["export", "--run", str(run_dir), "--out", str(other), "--force"]) == 0
    assert (other / "keep.txt").read_text() == "keep" and (other / "model.safetensors").is_file()
    out = export_vllm(run_dir, tmp_path / "vllm")
    (out / "user.txt").write_text("added by the user")
    export_vllm(run_dir, out)  # a previous export of the same kind: replaced in place
    assert (out / "user.txt").read_text() == "added by the user"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "specforge.json",
        "user.txt",
    ]
    with pytest.raises(SpecforgeError, match="is a vllm-export directory, not a previous hf-draft-export"):
        export_hf(run_dir, out)  # an export of another kind is not overwritten either


def test_building_the_tiny_target_into_a_foreign_folder_is_refused_before_training(tmp_path):
    from specforge.targets.tiny import build_tiny_target

    (tmp_path / "paper.tex").write_text("mine")
    with pytest.raises(SpecforgeError, match="not empty and is not something specforge wrote"):
        build_tiny_target(out_dir=tmp_path, progress=False)  # would train for minutes if not refused
    assert _files(tmp_path) == ["paper.tex"]


def test_vllm_export_reloads_as_the_same_draft(run_dir, tmp_path):
    from specforge.export import load_vllm_export

    out = export_vllm(run_dir, tmp_path / "vllm")
    emb = torch.randn(V, H)
    ours = load_draft(run_dir, emb)
    back = load_vllm_export(out, emb, num_target_layers=8)
    assert back.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_export_records_what_serving_checks(run_dir, tmp_path):
    from serving.draft_check import META_FILE, d2t_sha256, read_meta

    fp = {"vocab_size": V, "hidden_size": H, "num_layers": 8, "tokenizer_sha256": "x", "embedding_probe": []}
    final = {"eval/tau": 2.5, "eval/alpha_0": 0.7, "eval/alpha_1": 0.6, "eval/walk_tau": 2.1}
    final.update({f"eval/walk_acc_{i}": 0.5 for i in range(4)})
    served = {
        "t0": {
            "k": 4,
            "temperature": 0.0,
            "prompts": 3,
            "max_new_tokens": 8,
            "tau": 2.0,
            "acceptance_per_position": [0.6, 0.3, 0.1, 0.0],
            "alpha": [0.6, 0.5, 0.33, 0.0],
            "output_tokens": 24,
            "seconds": 1.0,
        }
    }
    (run_dir / "train_summary.json").write_text(
        json.dumps({"final": final, "steps": 7, "target": fp, "served": served})
    )
    for out in (export_vllm(run_dir, tmp_path / "vllm"), export_hf(run_dir, tmp_path / "hf")):
        meta = read_meta(out)
        assert meta is not None and (out / META_FILE).is_file()
        assert meta.method == "eagle3" and meta.aux_layer_ids == [2, 4, 5] and meta.steps == 7
        assert meta.d2t_sha256 == d2t_sha256(load_file(run_dir / "draft.safetensors")["d2t"].tolist())
        assert meta.estimates.teacher_forced_alpha == [0.7, 0.6] and meta.estimates.walk_k == 4
        assert meta.estimates.served["t0"].tau == 2.0


def _eagle1(seed: int = 0):
    from draft_models.eagle import EagleConfig, EagleDraft

    torch.manual_seed(seed)
    cfg = EagleConfig(
        hidden_size=H,
        intermediate_size=2 * H,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=V,
        num_target_layers=8,
    )
    draft = EagleDraft(cfg)
    for p in draft.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return draft


def test_eagle1_export_is_vllms_eagle_layout_and_round_trips(tmp_path):
    """EAGLE-1 exports as ``EagleLlamaForCausalLM``: fc [H, 2H], layers.0.* without an input norm, no
    embedding and no LM head (vLLM shares the target's); the names map back to the same weights."""
    from draft_models.eagle import from_vllm_tensors

    draft = _eagle1()
    run = write_draft_run(tmp_path / "run", draft)
    out = export_vllm(run, tmp_path / "vllm")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["EagleLlamaForCausalLM"] and cfg["num_hidden_layers"] == 1
    tensors = load_file(out / "model.safetensors")
    assert tensors["fc.weight"].shape == (H, 2 * H)
    assert not [k for k in tensors if "input_layernorm" in k or "embed" in k or "lm_head" in k]
    back = from_vllm_tensors(tensors)
    state = draft.state_dict()
    assert all(torch.equal(back[k], state[k]) for k in back) and len(back) == len(tensors)
    meta = (
        json.loads((out / "specforge_draft.json").read_text())
        if (out / "specforge_draft.json").exists()
        else None
    )
    assert meta is None or meta["method"] == "eagle"
    tensors["layers.0.input_layernorm.weight"] = torch.ones(H)
    with pytest.raises(SpecforgeError, match="unexpected tensor layers.0.input_layernorm.weight"):
        check_vllm(tensors, "eagle", draft.config)
    tensors.pop("layers.0.input_layernorm.weight")
    tensors["fc.weight"] = torch.zeros(H, 3 * H)
    with pytest.raises(SpecforgeError, match=r"fc.weight has shape \(32, 96\), expected \(32, 64\)"):
        check_vllm(tensors, "eagle", draft.config)
    tensors["fc.weight"] = torch.zeros(H, 2 * H, dtype=torch.int32)
    with pytest.raises(SpecforgeError, match="expected a float dtype"):
        check_vllm(tensors, "eagle", draft.config)
