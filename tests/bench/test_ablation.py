"""The pure parts of ``bench/ablation.py`` (the HVAE ablation table): the variant list, selection, imported
rows, the summary over seeds and the markdown table from hand-made rows, compare.py's command line. Nothing
is trained here; the ablation itself is checked by its smoke run (bench/README.md)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest


def _variant(ablation, method, name):
    return ablation.by_key()[f"{method}:{name}"]


# --------------------------------------------------------------------------------------------------
# the variants
# --------------------------------------------------------------------------------------------------


def test_variant_names_and_folders_are_unique(ablation):
    keys = [ablation.key(m, n) for n, m, _, _ in ablation.VARIANTS]
    assert len(set(keys)) == len(keys)
    for method in ablation.METHODS:
        slugs = [ablation.slug(n) for n, m, _, _ in ablation.VARIANTS if m == method]
        assert len(set(slugs)) == len(slugs)
        assert all("/" not in s and "=" not in s and "+" not in s for s in slugs)
    assert all(d for *_, d in ablation.VARIANTS), "every variant has a description"


def test_each_method_has_old_final_and_one_leave_one_out_per_change(ablation):
    for method in ablation.METHODS:
        names = [n for n, m, _, _ in ablation.VARIANTS if m == method]
        fields = [f for f, _, _ in ablation.changes(method)]
        assert names[:3] == ["old", "old+day_of_year", "final"]  # the table's fixed order
        assert names[3:3 + len(fields)] == [f"final-no-{f}" for f in fields]
    assert "sleep_masks" not in [f for f, _, _ in ablation.changes("elbo")]
    assert "final-no-sleep_masks" not in [n for n, m, _, _ in ablation.VARIANTS if m == "elbo"]
    extras = {m: [n for n, mm, _, _ in ablation.VARIANTS if mm == m][3 + len(ablation.changes(m)):]
              for m in ablation.METHODS}
    assert extras == {"symmetric": ["sleep_q=0", "sleep_q=0.2", "sleep_warmup=800", "image_scale=pixel"],
                      "elbo": ["estimator=score_function"]}
    assert _variant(ablation, "symmetric", "sleep_q=0")[2] == {"weights": {"sleep_q": 0.0}}
    assert _variant(ablation, "elbo", "estimator=score_function")[2] == {"estimator": "score_function",
                                                                          "num_particles": 2}


def test_old_is_every_change_off(ablation):
    old = {"init_scale": 1.0, "global_lr": 0.001, "augment": False, "weight_decay": 0.0, "ema_decay": 0.0,
           "sleep_masks": False, "clip_norm": 100.0, "day_of_year": False}
    assert _variant(ablation, "symmetric", "old")[2] == old
    assert _variant(ablation, "elbo", "old")[2] == {k: v for k, v in old.items() if k != "sleep_masks"}
    for method in ablation.METHODS:
        assert _variant(ablation, method, "final")[2] == {}
        assert _variant(ablation, method, "old+day_of_year")[2] == {**_variant(ablation, method, "old")[2],
                                                                     "day_of_year": True}


def test_every_leave_one_out_differs_from_final_in_its_field_only(ablation):
    from hvaeseg.methods import method_config

    for method in ablation.METHODS:
        final = dataclasses.asdict(method_config(method, {}))
        old = _variant(ablation, method, "old")[2]
        for field, value, _ in ablation.changes(method):
            options = _variant(ablation, method, f"final-no-{field}")[2]
            assert options == {field: old[field]} and old[field] == value
            config = dataclasses.asdict(method_config(method, options))
            assert [k for k in final if config[k] != final[k]] == [field], (method, field)
        # and the old configuration differs from the final one in every change
        config = dataclasses.asdict(method_config(method, old))
        assert sorted(k for k in final if config[k] != final[k]) == sorted(f for f, _, _ in ablation.changes(method))


def test_every_variant_is_a_valid_config(ablation):
    from hvaeseg.methods import method_config

    for _name, method, options, _ in ablation.VARIANTS:
        method_config(method, json.loads(json.dumps(options)))  # as compare.py gets them: through JSON


def test_select(ablation):
    assert [ablation.key(m, n) for n, m, _, _ in ablation.select(["elbo:old", "symmetric:final"])] == [
        "symmetric:final", "elbo:old"]  # in the table's order
    assert [ablation.key(m, n) for n, m, _, _ in ablation.select(["final"])] == ["symmetric:final", "elbo:final"]
    assert len(ablation.select(["*:final-no-*"])) == 8 + 7
    assert len(ablation.select(["symmetric:*"])) == 3 + 8 + 4
    assert ablation.select(None) == ablation.VARIANTS
    with pytest.raises(ValueError, match="matches no variant"):
        ablation.select(["symmetric:finale"])


def test_arguments_and_command(ablation):
    p, args = ablation.parse_args(["--variants", "symmetric:final-no-augment", "elbo:final", "--out", "/x/abl",
                                   "--budget", "2", "--block", "64"])
    assert [v[0] for v in args.selected] == ["final-no-augment", "final"]
    assert args.json.name == "ablation.json" and args.markdown.name == "ablation.md"
    out = ablation.variant_out(args.out, "symmetric", "sleep_q=0.2")
    assert out == Path("/x/abl/symmetric/sleep_q-0.2")
    run = ablation.AblationRun("synthetic:tiny", "symmetric", 10, 0, out / "r", {}, "sleep_q=0.2",
                               {"weights": {"sleep_q": 0.2}}, out)
    cmd = ablation.command(args, run)
    assert cmd[cmd.index("--out") + 1] == str(out)
    assert cmd[cmd.index("--options") + 1] == 'symmetric={"weights": {"sleep_q": 0.2}}'
    assert "--eval-val" in cmd and cmd[cmd.index("--threads") + 1] == "1"
    assert cmd[cmd.index("--budget") + 1] == "2" and cmd[cmd.index("--block") + 1] == "64"
    final = ablation.AblationRun("synthetic:tiny", "elbo", 10, 0, Path("r"), {}, "final", {}, Path("/x/abl/elbo/final"))
    assert "--options" not in ablation.command(args, final)
    for bad in (["--variants", "nope"], ["--import-map", "a=symmetric:final"], ["--jobs", "0"]):
        with pytest.raises(SystemExit):
            ablation.parse_args(bad)


# --------------------------------------------------------------------------------------------------
# imported rows
# --------------------------------------------------------------------------------------------------


def _adhoc(tag, method, seed=0, miou=0.5, data="synthetic:small", **extra):
    return {"tag": tag, "method": method, "data": data, "seed": seed, "steps": 1000, "best": 950,
            "val_acc": 0.6, "val_miou": miou - 0.05, "acc": 0.7, "miou": miou, "cons": 0.8, "iwae": -0.7,
            "wall": 245.0, "per_class": {"water": 0.0, "forest": 0.8}, **extra}


def test_import_map_parsing(ablation):
    assert ablation.parse_import_map(["sym-doy=symmetric:final", "x=final"]) == {"sym-doy": "symmetric:final",
                                                                                  "x": "final"}
    for bad in (["sym-doy"], ["=final"], ["a=final", "a=old"], ["a=symmetric:nope"], ["a=nope"]):
        with pytest.raises(ValueError):
            ablation.parse_import_map(bad)


def test_import_rows_map_tags_to_variants(ablation):
    lines = [
        _adhoc("sym-doy", "symmetric", miou=0.40),
        _adhoc("sym-doy", "symmetric", miou=0.47),  # run again: the last line counts
        _adhoc("sym-nosleep", "symmetric", miou=0.51),
        _adhoc("elbo-doy", "elbo", miou=0.66),
        _adhoc("elbo-doy", "elbo", seed=3, miou=0.1),  # a seed not in the study
        _adhoc("smoke-cs", "elbo", data="/tmp/w/cubes/s2.zarr"),  # a cube not in the study
        _adhoc("sup-doy", "supervised"),  # not mapped
    ]
    mapping = ablation.parse_import_map(["sym-doy=symmetric:final", "sym-nosleep=sleep_q=0", "elbo-doy=final",
                                         "smoke-cs=elbo:old"])
    rows, notes = ablation.import_rows(lines, mapping, cubes={"synthetic:small": "synthetic:small"},
                                       labels={"synthetic:small": 10}, seeds=[0, 1], source="ad hoc x.py")
    assert [(r["method"], r["variant"], r["seed"], r["mean_iou"]) for r in rows] == [
        ("symmetric", "final", 0, 0.47), ("symmetric", "sleep_q=0", 0, 0.51), ("elbo", "final", 0, 0.66)]
    r = rows[0]
    assert r["source"] == "ad hoc x.py" and r["tag"] == "sym-doy" and r["cube"] == "synthetic:small"
    assert (r["accuracy"], r["val_accuracy"], r["val_mean_iou"], r["consistency"], r["iwae_nats_per_value"],
            r["steps"], r["best_step"], r["labels"]) == (0.7, 0.6, 0.47 - 0.05, 0.8, -0.7, 1000, 950, 10)
    assert r["iou"] == {"water": 0.0, "forest": 0.8} and r["train_seconds"] is None
    assert len(notes) == 2 and any("seed 3" in n for n in notes) and any("s2.zarr" in n for n in notes)
    # a cube given by name matches rows whose data is its resolved store
    rows, _ = ablation.import_rows([_adhoc("a", "elbo", data="/c/s2.zarr")], {"a": "elbo:old"},
                                   cubes={"s2": "/c/s2.zarr"}, labels={"s2": 10}, seeds=[0])
    assert rows[0]["cube"] == "s2"
    with pytest.raises(ValueError, match="not in the imported file"):
        ablation.import_rows(lines, {"typo": "final"}, cubes={"synthetic:small": "synthetic:small"},
                             labels={"synthetic:small": 10}, seeds=[0])
    with pytest.raises(ValueError, match="method"):
        ablation.import_rows(lines, {"sym-doy": "elbo:final"}, cubes={"synthetic:small": "synthetic:small"},
                             labels={"synthetic:small": 10}, seeds=[0])
    with pytest.raises(ValueError, match="no variant"):  # a bare name the row's method does not have
        ablation.import_rows(lines, {"elbo-doy": "sleep_q=0"}, cubes={"synthetic:small": "synthetic:small"},
                             labels={"synthetic:small": 10}, seeds=[0])


def _row(ablation, variant, seed, miou, method="symmetric", source=None, cube="synthetic:small", **extra):
    row = {"cube": cube, "variant": variant, "method": method, "labels": 10, "seed": seed,
           **{k: None for k in ablation.ROW_KEYS}, "accuracy": miou + 0.2, "mean_iou": miou,
           "iou": {"a": miou, "b": 1 - miou}, "steps": 1000 + seed, "source": source or ablation.SOURCE, **extra}
    return row


def test_merge_keeps_a_finished_run_over_an_imported_row(ablation):
    new = [_row(ablation, "final", 0, 0.5), _row(ablation, "old", 0, 0.3)]
    imported = [_row(ablation, "final", 0, 0.9, source="ad hoc"), _row(ablation, "final", 1, 0.6, source="ad hoc"),
                _row(ablation, "final", 0, 0.7, method="elbo", source="ad hoc")]
    rows = ablation.merge(new, imported)
    assert [(r["method"], r["variant"], r["seed"], r["mean_iou"], r["source"]) for r in rows] == [
        ("symmetric", "old", 0, 0.3, ablation.SOURCE), ("symmetric", "final", 0, 0.5, ablation.SOURCE),
        ("symmetric", "final", 1, 0.6, "ad hoc"), ("elbo", "final", 0, 0.7, "ad hoc")]


# --------------------------------------------------------------------------------------------------
# summary and markdown
# --------------------------------------------------------------------------------------------------


def _rows(ablation) -> list[dict]:
    rows = []
    for seed in (0, 1, 2):
        rows.append(_row(ablation, "final-no-augment", seed, 0.40 + 0.01 * seed, val_accuracy=0.6 + 0.01 * seed,
                         val_mean_iou=0.45, consistency=0.8, iwae_nats_per_value=-0.7))
        rows.append(_row(ablation, "final", seed, 0.50 + 0.02 * seed, val_accuracy=0.7, val_mean_iou=0.5,
                         consistency=0.85, iwae_nats_per_value=-0.6,
                         source="ad hoc x.py" if seed == 0 else None))
    rows.append(_row(ablation, "sleep_q=0", 0, 0.55))  # one seed, no val figures (an older compare.py row)
    rows.append(_row(ablation, "old", 0, 0.30))
    rows.append(_row(ablation, "old", 0, 0.60, method="elbo"))  # no final for elbo
    return rows


def test_summary_is_the_mean_and_sample_sd_over_seeds_with_deltas_to_final(ablation):
    summary = ablation.summarise(_rows(ablation))
    assert [(e["method"], e["variant"]) for e in summary] == [
        ("symmetric", "old"), ("symmetric", "final"), ("symmetric", "final-no-augment"),
        ("symmetric", "sleep_q=0"), ("elbo", "old")]  # method, then the table's fixed order
    final, no_aug = summary[1], summary[2]
    assert final["seeds"] == [0, 1, 2] and final["imported_seeds"] == [0] and no_aug["imported_seeds"] == []
    assert final["mean_iou"] == pytest.approx(statistics.fmean([0.50, 0.52, 0.54]))
    assert final["mean_iou_sd"] == pytest.approx(statistics.stdev([0.50, 0.52, 0.54]))
    assert no_aug["val_accuracy"] == pytest.approx(0.61) and no_aug["val_accuracy_sd"] == pytest.approx(0.01)
    assert no_aug["steps"] == pytest.approx(1001)
    assert no_aug["iou"]["a"] == pytest.approx(0.41) and no_aug["iou"]["b"] == pytest.approx(0.59)
    assert no_aug["delta_mean_iou"] == pytest.approx(0.41 - 0.52)
    assert no_aug["delta_accuracy"] == pytest.approx(0.41 - 0.52)
    assert final["delta_mean_iou"] == 0.0
    one = summary[3]
    assert one["mean_iou_sd"] is None and one["val_accuracy"] is None and one["val_accuracy_sd"] is None
    assert one["description"].startswith("no sleep term") and one["options"] == {"weights": {"sleep_q": 0.0}}
    assert summary[4]["delta_mean_iou"] is None  # elbo has no final row


def test_markdown_from_hand_made_rows(ablation):
    report = {"summary": ablation.summarise(_rows(ablation)), "budget_s": 240.0, "labels": 10, "threads": 1,
              "cubes": [{"cube": "synthetic:small", "label": "synthetic:small"}],
              "import_sources": ["ad hoc x.py"], "import_notes": ["x.py writes checkpoints at the end."]}
    text = ablation.render_markdown(report)
    lines = text.splitlines()
    assert "N = 10 labelled locations, 240 s training per run on 1 thread" in text
    header = next(i for i, t in enumerate(lines) if t.startswith("| method |"))
    assert lines[header] == "| " + " | ".join(ablation.COLUMNS) + " |"
    table = lines[header + 2: header + 7]
    cells = [[c.strip() for c in t.strip("|").split(" | ")] for t in table]
    assert all(len(c) == len(ablation.COLUMNS) for c in cells)
    assert [(c[0], c[1]) for c in cells] == [("symmetric", "`old`"), ("symmetric", "`final`"),
                                             ("symmetric", "`final-no-augment`"), ("symmetric", "`sleep_q=0`"),
                                             ("elbo", "`old`")]
    old, final, no_aug, one, elbo = cells
    assert final[3] == "0* 1 2" and final[-1] == "(ref)"
    assert final[5] == f"0.520 ± {statistics.stdev([0.50, 0.52, 0.54]):.3f}"
    assert no_aug[-1] == "-0.110" and old[-1] == "-0.220" and elbo[-1] == "–"
    assert no_aug[10] == "1001 ± 1" and no_aug[9] == "-0.700 ± 0.000"
    assert one[5] == "0.550" and one[6] == "–" and one[7] == "–"  # one seed: no sd; no val figures
    assert "`*` a seed imported from ad hoc x.py" in text and "x.py writes checkpoints at the end." in text
    # no imported seeds: no footnote; a cube without rows still gets its section
    report = {"summary": ablation.summarise([_row(ablation, "final", 0, 0.5)]), "budget_s": 2.0, "labels": 10,
              "cubes": [{"cube": "synthetic:small", "label": "synthetic:small"},
                        {"cube": "s2", "label": "real: s2"}]}
    text = ablation.render_markdown(report)
    assert "`*`" not in text and "## real: s2\n" in text and "| `final` |" in text
    # N as run: a cube with fewer locations than asked for has them all
    report["cubes"] = [{"cube": "synthetic:small", "label": "synthetic:small", "labels": 10},
                       {"cube": "s2", "label": "real: s2", "labels": 7}]
    text = ablation.render_markdown(report)
    assert "N = 10 labelled locations" in text and "## real: s2 (N = 7)" in text and "## synthetic:small\n" in text
    report["cubes"] = [{"cube": "synthetic:tiny", "label": "synthetic:tiny", "labels": 8}]
    assert "N = 8 labelled locations" in ablation.render_markdown(report)


def test_render_only_rewrites_the_markdown_from_the_json(ablation, tmp_path):
    report = {"summary": ablation.summarise(_rows(ablation)), "budget_s": 240.0, "labels": 10,
              "cubes": [{"cube": "synthetic:small", "label": "synthetic:small"}]}
    (tmp_path / "a.json").write_text(json.dumps(report))
    assert ablation.main(["--render-only", "--json", str(tmp_path / "a.json"),
                          "--markdown", str(tmp_path / "a.md")]) == 0
    assert (tmp_path / "a.md").read_text() == ablation.render_markdown(report)
