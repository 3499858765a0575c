"""The evaluation protocol on a tiny dataset: baselines, a plain callable agent, SB3 models, outputs."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

from wsigym.agents.baselines import RandomAgent, make_baseline
from wsigym.agents.benchmark import published_table
from wsigym.envs.zoom import WSIZoomEnv
from wsigym.evaluate import METRICS, as_agent, evaluate, run_split
from wsigym.readme_sections import replace_section


def _kw(env_kwargs):
    return {k: v for k, v in env_kwargs.items() if k != "dataset"}


def test_plain_callable_agent_and_report(env_kwargs, tmp_path):
    seen = []

    def first_legal(obs, info):  # a researcher's own agent, no SB3
        seen.append(info["slide_id"])
        return int(np.flatnonzero(obs["action_mask"])[0])

    report = evaluate(
        [first_legal, "random", "no-zoom", "full-hafed"],
        dataset=env_kwargs["dataset"],
        split="train",
        seeds=(0, 1),
        env_kwargs=_kw(env_kwargs),
        progress=False,
    )
    assert [(r.agent, r.budget) for r in report.rows] == [
        ("first_legal", 0.1),
        ("first_legal", 0.2),
        ("random", 0.1),
        ("random", 0.2),
        ("no-zoom", 0.0),
        ("full-hafed", 1.0),
    ]
    slides = env_kwargs["dataset"].splits[0]["train"]
    assert set(seen) == set(slides) and report.slides == len(slides)
    for row in report.rows:
        assert set(METRICS) <= set(row.mean) and len(row.per_seed) == 2
        assert 0.0 <= row.mean["accuracy"] <= 1.0
    by = {(r.agent, r.budget): r for r in report.rows}
    n_mean = np.mean([env_kwargs["dataset"].load(s).features.shape[0] for s in slides])
    assert by[("no-zoom", 0.0)].mean["zooms"] == 0.0
    assert by[("full-hafed", 1.0)].mean["zooms"] == pytest.approx(n_mean)
    budgets = [math.ceil(0.2 * env_kwargs["dataset"].load(s).features.shape[0]) for s in slides]
    assert by[("random", 0.2)].mean["zooms"] == pytest.approx(np.mean(budgets))
    assert by[("first_legal", 0.1)].std["accuracy"] == 0.0  # deterministic agent
    md = report.to_markdown()
    assert md.count("\n") == len(report.rows) + 1 and "first_legal" in md
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert data["rows"][0]["agent"] == "first_legal"


def test_full_hafed_equals_zooming_every_patch(env_kwargs):
    kw = _kw(env_kwargs)
    full = evaluate(
        ["full-hafed"],
        dataset=env_kwargs["dataset"],
        split="train",
        seeds=(0,),
        env_kwargs=kw,
        progress=False,
    )
    stepped = evaluate(
        ["coverage"],
        dataset=env_kwargs["dataset"],
        split="train",
        budgets=(1.0,),
        seeds=(0,),
        env_kwargs=kw,
        progress=False,
    )
    for key in ("accuracy", "auc", "ece", "nll"):
        assert full.rows[0].mean[key] == pytest.approx(stepped.rows[0].mean[key], abs=1e-4)


def test_oracle_hits_more_tumour_than_random(env_kwargs):
    report = evaluate(
        ["oracle", "random", "attention-topk", "coverage"],
        dataset=env_kwargs["dataset"],
        split="train",
        budgets=(0.2,),
        seeds=(0,),
        env_kwargs=_kw(env_kwargs),
        progress=False,
    )
    hits = {r.agent: r.mean["tumour_hits"] for r in report.rows}
    assert hits["oracle"] > hits["random"]
    assert {r.agent: r.mean["tumour_reached"] for r in report.rows}["oracle"] == 1.0


def test_tumour_reached_is_the_share_of_tumour_slides_with_a_tumour_zoom(env_kwargs):
    slides = env_kwargs["dataset"].splits[0]["train"]
    label_and_hit: dict[str, list] = {}

    class Record(gym.Wrapper):
        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            self.slide = info["slide_id"]
            label_and_hit[self.slide] = [info["label"], False]
            return obs, info

        def step(self, action):
            out = self.env.step(action)
            label_and_hit[self.slide][1] |= bool(out[4]["hit_tumour"])
            return out

    env = Record(gym.make("WSIZoom-v0", split="train", budget=0.03, **env_kwargs))
    metrics = run_split(RandomAgent(seed=0), env, slides)
    reached = [hit for label, hit in label_and_hit.values() if label == 1]
    assert 0 < sum(reached) < len(reached)  # the case can tell a share from all or none
    assert metrics["tumour_reached"] == pytest.approx(np.mean(reached))
    assert math.isnan(run_split(RandomAgent(), env, slides, zero_steps=True)["tumour_reached"])


def test_oracle_needs_ground_truth(models, no_truth_dataset):
    hafed, tsu = models
    with pytest.raises(ValueError, match="ground truth"):
        evaluate(
            ["oracle"],
            dataset=no_truth_dataset,
            split="train",
            seeds=(0,),
            env_kwargs={"hafed": hafed, "tsu": tsu},
            progress=False,
        )


def test_bad_agents():
    with pytest.raises(ValueError, match="unknown agent"):
        as_agent("greedy-magic")
    with pytest.raises(TypeError, match="callable"):
        as_agent(42)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("nope")


def test_illegal_action_from_agent_raises(env_kwargs):
    with pytest.raises(ValueError, match=r"padding index|already zoomed"):
        evaluate(
            lambda obs, info: 0,
            dataset=env_kwargs["dataset"],
            split="train",
            seeds=(0,),
            env_kwargs=_kw(env_kwargs),
            progress=False,
        )


def test_random_agent_is_seeded_and_legal():
    obs = {"action_mask": np.array([0, 1, 1, 0, 1], dtype=np.int8)}
    a = [RandomAgent(3)(obs, {}) for _ in range(3)]
    assert len(set(a)) == 1 and obs["action_mask"][a[0]] == 1


def test_readme_section_replacement(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- results:synth-c16 -->\nold\n<!-- /results:synth-c16 -->\nbottom\n")
    readme.chmod(0o640)
    replace_section(readme, "synth-c16", "| new |")
    assert readme.stat().st_mode & 0o777 == 0o640  # the atomic rename keeps the file's permissions
    assert (
        readme.read_text()
        == "top\n<!-- results:synth-c16 -->\n| new |\n<!-- /results:synth-c16 -->\nbottom\n"
    )
    with pytest.raises(ValueError, match="markers"):
        replace_section(readme, "camelyon16", "x")
    assert "different dataset" not in published_table() and "CAMELYON16" in published_table()


def test_evaluate_env_instance_factory_and_slide_selection(env_kwargs):
    import gymnasium as gym

    from wsigym.evaluate import select_slides

    kw = _kw(env_kwargs)
    ds = env_kwargs["dataset"]
    env = gym.make("WSIZoom-v0", dataset=ds, split="train", budget=0.2, **kw)
    ids = env.unwrapped.slide_ids
    seen = []

    def spy(obs, info):
        seen.append(info["slide_id"])
        return int(np.flatnonzero(obs["action_mask"])[0])

    report = evaluate([spy], env=env, slides=[ids[2], ids[0]], seeds=(0,), progress=False)
    assert [(r.agent, r.budget) for r in report.rows] == [("spy", 0.2)]
    assert report.slides == 2 and list(dict.fromkeys(seen)) == [ids[2], ids[0]]
    assert report.split == "train" and report.env_id == "WSIZoom-v0"
    env.reset(seed=0)  # the caller's env is not closed
    made = []

    def factory(budget):
        made.append(budget)
        return WSIZoomEnv(dataset=ds, split="train", budget=budget, **kw)

    report = evaluate(["random"], env=factory, budgets=(0.1, 0.2), sample=3, sample_seed=1, progress=False)
    assert made == [0.1, 0.2] and report.slides == 3
    a = select_slides(ids, sample=3, sample_seed=1)
    assert a == select_slides(ids, sample=3, sample_seed=1) and len(set(a)) == 3
    assert a == [i for i in ids if i in a]  # split order
    with pytest.raises(ValueError, match="not in the split"):
        select_slides(ids, slides=["nope"])
    with pytest.raises(ValueError, match=r"sample must be in \[1, 6\]"):
        select_slides(ids, sample=7)
    with pytest.raises(ValueError, match="at most one"):
        select_slides(ids, sample=2, max_slides=3)
    with pytest.raises(TypeError, match=r"env must be a gym\.Env"):
        evaluate(["random"], env=42, progress=False)


def test_evaluate_cli_slides_and_sample(tmp_path, monkeypatch):
    from wsigym.cli import main

    with pytest.raises(SystemExit, match="--slides/--sample"):
        main(["evaluate", "--all", "--sample", "3", "--out", str(tmp_path)])


def test_shared_observations_for_built_agents_copies_for_a_callers_agent(env_kwargs):
    """Agents evaluate() builds keep no observation, so their environments share the state buffer
    (copy_obs=False) with the same results; a caller's callable, which may keep observations, gets copies."""
    agents = ["random", "attention-topk", "oracle"]
    args = {"dataset": env_kwargs["dataset"], "split": "train", "budgets": (0.2,), "seeds": (0, 1)}
    shared = evaluate(agents, env_kwargs=_kw(env_kwargs), progress=False, **args)
    copied = evaluate(agents, env_kwargs={**_kw(env_kwargs), "copy_obs": True}, progress=False, **args)
    for a, b in zip(shared.rows, copied.rows, strict=True):
        for x, y in zip(a.per_seed, b.per_seed, strict=True):
            x.pop("seconds_per_slide"), y.pop("seconds_per_slide")
            assert json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    kept = []

    def keeper(obs, info):
        kept.append(obs["state"])
        return int(np.flatnonzero(obs["action_mask"])[0])

    evaluate([keeper], env_kwargs=_kw(env_kwargs), progress=False, **{**args, "seeds": (0,)})
    assert len(kept) > 2 and not any(np.shares_memory(kept[0], k) for k in kept[1:])


def test_attention_greedy_zooms_the_most_attended_legal_patch_of_the_current_state(env_kwargs):
    """Every zoom is the argmax of HAFED's attention on ``S_t`` over the legal patches, so under TSU
    (which rewrites rows) the zooms part from those of the no-update env, whose first zoom they share."""
    from wsigym.agents.baselines import AttentionGreedy

    zooms = {}
    for update in ("tsu", "none"):
        env = WSIZoomEnv(**env_kwargs, split="train", budget=0.5, update=update, tau=0.5)
        agent = make_baseline("attention-greedy")
        obs, info = env.reset(options={"slide_index": 0})
        agent.reset(env, obs, info)
        done, taken = False, []
        while not done:
            attention = env.attention()
            legal = np.flatnonzero(obs["action_mask"])
            a = agent(obs, info)
            assert a in legal and attention[a] == attention[legal].max()
            taken.append(a)
            obs, _, terminated, truncated, info = env.step(a)
            done = terminated or truncated
        zooms[update] = taken
    assert zooms["tsu"][0] == zooms["none"][0] and zooms["tsu"] != zooms["none"]
    with pytest.raises(TypeError, match="attention"):
        AttentionGreedy().reset(object(), obs, info)
    with pytest.raises(RuntimeError, match="reset"):
        AttentionGreedy()(obs, info)
