"""Evaluation metrics: exact means on hand-made cases, interval forms, exclusions, CoTyle extremes."""
import json
import math

import numpy as np
import pytest

from stylejax.eval import metrics as M


def _schema_ok(m):
  assert set(m) == {"mean", "ci95", "n"}
  json.dumps(m, allow_nan=False)  # plain floats / None only


def test_wilson_matches_newcombe_1998_table():
  # Newcombe (1998), Stat Med 17:857, Table I, method 3 (Wilson score) at z = 1.96.
  for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                           (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
    got = M.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5), (k, n)


def test_mean_ci_normal_approximation():
  v = [0.1, 0.3, 0.5, 0.7]
  m = M.mean_ci(v)
  _schema_ok(m)
  half = 1.959963984540054 * np.std(v, ddof=1) / 2.0
  assert m["mean"] == pytest.approx(0.4)
  assert m["ci95"] == pytest.approx([0.4 - half, 0.4 + half])
  assert m["n"] == 4
  assert M.mean_ci([])["mean"] is None and M.mean_ci([0.5])["ci95"] == [None, None]


def test_text_fidelity_needs_all_three_heads():
  prompt = {"shape": [0, 1, 2, 3], "color": [0, 0, 1, 1], "count": [1, 2, 3, 1]}
  pred = {"shape": [0, 1, 2, 0], "color": [0, 5, 1, 1], "count": [1, 2, 3, 1]}
  m = M.text_fidelity(pred, prompt)  # image 0 and 2 fully right; 1 wrong color; 3 wrong shape
  _schema_ok(m)
  assert m["mean"] == 0.5 and m["n"] == 4
  assert m["ci95"] == pytest.approx(list(M.wilson_interval(2, 4)))
  heads = M.text_fidelity_per_head(pred, prompt)
  assert heads["shape"]["mean"] == 0.75 and heads["color"]["mean"] == 0.75 and heads["count"]["mean"] == 1.0
  # [N, 3] arrays in (shape, color, count) order are accepted too.
  as_arr = lambda d: np.stack([d["shape"], d["color"], d["count"]], 1)
  assert M.text_fidelity(as_arr(pred), as_arr(prompt)) == m


def test_content_leakage_counts_leaks_and_excludes_same_shape_prompts():
  ref = [4, 4, 4, 4, 4]
  prompt = [1, 2, 3, 4, 4]   # the last two ask for the reference's own shape: excluded
  pred = [4, 2, 3, 4, 1]     # image 0 shows the reference's shape although the prompt asked for shape 1
  m = M.content_leakage(pred, prompt, ref)
  _schema_ok(m)
  assert m["n"] == 3 and m["mean"] == pytest.approx(1 / 3)
  assert m["ci95"] == pytest.approx(list(M.wilson_interval(1, 3)))
  # Every prompt shares the reference's shape -> nothing to measure.
  empty = M.content_leakage([0, 1], [4, 4], [4, 4])
  _schema_ok(empty)
  assert empty["n"] == 0 and empty["mean"] is None


def test_structure_adherence_on_hand_made_images():
  # gray background with a red outlined square (filled by hole filling) in image 0, a blue bar in image 1
  images = np.full((2, 16, 16, 3), 128, np.uint8)
  images[0, 3:9, 3:9] = (255, 0, 0)
  images[0, 4:8, 4:8] = 128  # outline only: the interior is background-coloured
  images[1, 10:14, 2:14] = (0, 0, 255)
  square = np.zeros((16, 16), bool)
  square[3:9, 3:9] = True
  bar = np.zeros((16, 16), bool)
  bar[10:14, 2:14] = True
  np.testing.assert_array_equal(M.foreground_mask(images), np.stack([square, bar]))
  np.testing.assert_allclose(M.structure_adherence(images, np.stack([square, bar])), [1.0, 1.0])
  half = square.copy()
  half[3:9, 6:9] = False  # 18 of the square's 36 pixels
  np.testing.assert_allclose(M.mask_iou(np.stack([square, bar]), np.stack([half, square])), [0.5, 0.0])
  assert M.mask_iou(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))[0] == 1.0  # nothing asked, nothing drawn
  with pytest.raises(ValueError, match="shapes differ"):
    M.mask_iou(square[None], bar[None, :8])


def test_cosine_metrics_exact():
  a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
  b = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  expected = np.array([1.0, 0.0, 1 / math.sqrt(2)])
  for fn in (M.style_fidelity, M.clip_i, M.dino, M.image_similarity, M.clip_t):
    m = fn(a, b)
    _schema_ok(m)
    assert m["mean"] == pytest.approx(expected.mean()) and m["n"] == 3
  m100 = M.clip_t(a, b, scale=100.0)
  assert m100["mean"] == pytest.approx(100 * expected.mean())
  assert m100["ci95"] == pytest.approx([100 * x for x in M.clip_t(a, b)["ci95"]])
  # A single reference [D] broadcasts against all generated images.
  assert M.clip_i(a, np.array([1.0, 0.0]))["mean"] == pytest.approx(expected.mean())


def test_style_consistency_and_diversity():
  rng = np.random.default_rng(0)
  e = rng.normal(size=(5, 8))
  same = np.broadcast_to(e[0], (3, 4, 8))  # 3 groups, each 4 identical embeddings
  c = M.style_consistency(same)
  _schema_ok(c)
  assert c["mean"] == pytest.approx(1.0) and c["n"] == 3
  # Identical codes -> diversity 0; orthogonal codes -> diversity 1.
  assert M.style_diversity(np.broadcast_to(e[0], (4, 3, 8)))["mean"] == pytest.approx(0.0, abs=1e-12)
  eye = np.eye(4)[:, None, :].repeat(2, axis=1)
  d = M.style_diversity(eye)
  assert d["mean"] == pytest.approx(1.0) and d["n"] == 4
  # Hand example: group [x, y, -x] pairwise cosines 0, -1, 0 -> mean -1/3.
  x, y = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  assert M.style_consistency([np.stack([x, y, -x]), np.stack([x, x])])["mean"] == pytest.approx((-1 / 3 + 1) / 2)
  # Centroids at 0 and 90 degrees and 180: pair cosines 0, -1, 0 -> diversity 1 + 1/3.
  assert M.style_diversity(np.stack([x, y, -x]))["mean"] == pytest.approx(1 + 1 / 3)


def test_evaluation_protocol_jobs_and_aggregation():
  proto = M.evaluation_protocol(["neon", "pixel"], ["two red stars", "one blue ring", "three green crosses"],
                                samples_per_prompt=2, seed=3)
  jobs = proto.jobs()
  assert len(jobs) == len(proto) == 12
  assert [j.style for j in jobs[:6]] == ["neon"] * 6 and jobs[6].style == "pixel"
  assert len({j.seed for j in jobs}) == 12
  # Seeds depend only on (seed, style, prompt, sample): a bigger protocol keeps the old seeds.
  bigger = M.evaluation_protocol(["neon", "pixel", "mosaic"], ["two red stars", "one blue ring",
                                                               "three green crosses", "x"], 2, seed=3).jobs()
  old = {(j.style_index, j.prompt_index, j.sample): j.seed for j in jobs}
  assert all(old[(j.style_index, j.prompt_index, j.sample)] == j.seed for j in bigger if j.style_index < 2
             and j.prompt_index < 3)

  fidelity = np.array([1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0])
  leak = np.array([np.nan, 0, 1, np.nan, 0, 0, 1, 1, np.nan, np.nan, 0, 1])
  sim = np.linspace(0.0, 1.1, 12)
  rep = proto.aggregate({"text_fidelity": fidelity, "content_leakage": leak, "clip_t": sim},
                        group_metrics={"size": lambda idx: M.mean_ci([len(idx)])})
  clustered = {k: m.pop("ci95_clustered") for k, m in rep["overall"].items() if k != "size"}
  assert rep["overall"]["text_fidelity"] == M.rate_ci(fidelity)
  # resampled by (style, prompt) cell: jobs 2k and 2k + 1 are one prompt's two samples
  assert clustered["text_fidelity"] == M.cluster_ci(fidelity, np.arange(12) // 2, rate=True)["ci95"]
  assert clustered["clip_t"] == M.cluster_ci(sim, np.arange(12) // 2)["ci95"]
  for m in rep["per_style"]["pixel"].values():
    m.pop("ci95_clustered", None)
  assert rep["overall"]["content_leakage"]["n"] == 8 and rep["overall"]["content_leakage"]["mean"] == 0.5
  assert rep["per_style"]["neon"]["text_fidelity"]["mean"] == pytest.approx(5 / 6)
  assert rep["per_style"]["pixel"]["content_leakage"] == M.rate_ci([1, 1, 0, 1])
  assert rep["per_style"]["pixel"]["clip_t"]["mean"] == pytest.approx(sim[6:].mean())
  assert rep["overall"]["size"]["mean"] == 12 and rep["per_style"]["neon"]["size"]["mean"] == 6
  json.dumps(rep, allow_nan=False)
  with pytest.raises(ValueError, match="12 jobs"):
    proto.aggregate({"clip_t": sim[:5]})


def test_mcnemar_matches_the_exact_binomial():
  p = M.mcnemar_exact
  assert p(0, 0) == 1.0
  assert p(5, 0) == p(0, 5) == 2 / 2 ** 5          # all five discordant renders one way
  assert abs(p(34, 16) - 0.01535) < 1e-4           # scipy.stats.binomtest(16, 50).pvalue
  assert p(10, 10) == 1.0


def test_paired_report_counts_only_the_discordant_items():
  ref = np.array([1, 1, 0, 0, 1, 0], bool)
  new = np.array([1, 0, 1, 1, 1, 1], bool)      # gains items 2, 3, 5; loses item 1
  line = M.paired_report(ref, new)
  assert line.startswith("0.500 -> 0.833 (+3 / -1,")
  assert f"p = {M.mcnemar_exact(3, 1):.3g})" in line


def test_cluster_bootstrap_se_sees_clustering():
  rng = np.random.default_rng(0)
  x = rng.normal(size=400)
  iid = x.std(ddof=1) / np.sqrt(x.size)
  # one item per cluster: the ordinary standard error (bootstrap noise ~2% at 4000 draws)
  assert abs(M.cluster_bootstrap_se(x, np.arange(400)) / iid - 1) < 0.05
  # 8 clusters of 50 identical items: the exact bootstrap sd is the cluster means' population sd / sqrt(8)
  c = rng.normal(size=8)
  blocks, ids = np.repeat(c, 50), np.repeat(np.arange(8), 50)
  assert abs(M.cluster_bootstrap_se(blocks, ids) / (c.std() / np.sqrt(8)) - 1) < 0.05
  assert M.cluster_bootstrap_se(blocks, ids) > 3 * blocks.std(ddof=1) / np.sqrt(blocks.size)
  # NaN items do not count (pairs with one NaN each = the other item alone); same seed, same number
  y = np.where(np.arange(400) % 2, np.nan, x)
  assert M.cluster_bootstrap_se(y, np.arange(400) // 2) == M.cluster_bootstrap_se(x[::2], np.arange(200))
  with pytest.raises(ValueError, match="one cluster id per value"):
    M.cluster_bootstrap_se(x, np.arange(5))
  # cluster_ci: pairs of equal items carry half the information of independent ones (interval ~sqrt(2) wider)
  pairs = np.repeat(x[:200], 2)
  iid, clustered = M.mean_ci(pairs)["ci95"], M.cluster_ci(pairs, np.arange(400) // 2)["ci95"]
  assert (clustered[1] - clustered[0]) / (iid[1] - iid[0]) == pytest.approx(np.sqrt(2), rel=0.06)
  rate = M.cluster_ci([0, 0, 0, 1, np.nan], [0, 0, 1, 1, 2], rate=True)
  assert rate["n"] == 4 and rate["mean"] == 0.25 and rate["ci95"][0] == 0.0  # clipped at 0, NaN skipped
  assert M.cluster_ci([1.0, 2.0], [0, 0])["ci95"] == [None, None]  # one cluster: no interval


def test_eval_replication_z_between_two_evaluation_sets(tmp_path, capsys):
  """launch/eval_replication.py: z = difference of two sets' means over the combined SE; clustering by
  reference widens the SE when a reference's images agree with each other; bad pairs get one clear error."""
  from _testutil import launch_module
  rep = launch_module("eval_replication")
  styles, prompts, samples = 4, 2, 3
  per_style = np.repeat([0.1, 0.4, 0.2, 0.5], prompts * samples)  # every image of a reference scores alike
  args = dict(base="b", steps=1, runlocal=False, scorers="", config_set=[], num_styles=styles,
              prompts_per_style=prompts, samples=samples)
  paths = []
  for seed, shift in ((0, 0.0), (1, 0.1)):
    scores = {"text_fidelity": list((np.arange(24) % 2 == seed).astype(float)), "content_leakage": [0.0] * 24,
              "style_fidelity": list(per_style + shift)}
    (tmp_path / str(seed)).mkdir()
    (tmp_path / str(seed) / "ablations.json").write_text(json.dumps(
        {"args": {**args, "seed": seed}, "per_image": {"stylear": scores, "stylear_dpo": scores}}))
    paths.append(str(tmp_path / str(seed)))
  text = rep.main(paths)
  assert "stylear_dpo" not in text  # each run's DPO model is its own: left out unless asked for
  style_row = next(r for r in text.splitlines() if r.startswith("| stylear | style_fidelity"))
  z = [float(c) for c in style_row.strip("| ").split(" | ")[4:]]
  se = per_style.std(ddof=1) / np.sqrt(24)
  assert z[0] == pytest.approx(-0.1 / np.hypot(se, se), abs=0.01)  # iid
  assert abs(z[2]) < abs(z[1]) < abs(z[0])  # prompt cells, then whole references: wider SEs
  assert "| stylear | text_fidelity | 0.500 | 0.500 | +0.00 |" in text
  for bad, message in (([paths[0]], "come in pairs"), ([paths[0], str(tmp_path / "x")], "not found")):
    with pytest.raises(SystemExit):
      rep.main(bad)
    assert message in capsys.readouterr().err
