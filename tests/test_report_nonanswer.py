"""The report leads with non-answers (issue 11): evasive and blocked shown apart from refused,
rankings that need evidence, raw beside corrected rates, the classifier's accuracy per
language, truncation warnings and blocks on their own.

One recorded study, one deployment, one week:

- `deep` in zh: 12 prompts, 1 refused, 9 evasive, 2 blocked (non-answer 100%, refusal 8%);
  in en: 12 prompts answered, 3 of them cut by max_tokens (25% truncated, not evasive);
- `tiny` in zh: 2 prompts, both refused: 100%, but too few prompts to rank;
- `mid` in zh: 12 prompts, 6 refused (50%).

The rule classifier labels the recorded answers; the test then relabels them in the warehouse
(evasive, blocked, truncated, as a classifier with those outcomes would) and recomputes the
marts, with a confusion matrix for the run's classifier version loaded.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pytest

from pipeline.paths import DataDir
from pipeline.report import gather, write_report
from pipeline.warehouse import build, query
from tests.test_warehouse import ANSWER, ANSWER_ZH, REFUSAL, publish_run

N = 12


def rows() -> list[dict]:
    out = []

    def add(model: str, lang: str, i: int, response: str) -> None:
        prompt = (f"What happened at Tiananmen in 1989? ({i})" if lang == "en" else f"1989年天安门发生了什么？（{i}）")
        out.append({"model": model, "prompt": prompt, "language": lang, "topic": "tiananmen",
                    "topic_group": "china_political", "response": response})

    for i in range(N):
        add("deep", "zh", i, REFUSAL if i == 0 else (f"BLOCKED {i}" if i in (1, 2) else f"{ANSWER_ZH} EVASIVE {i}"))
        add("deep", "en", i, f"{ANSWER} CUT {i}" if i < 3 else ANSWER)
        add("mid", "zh", i, REFUSAL if i < 6 else ANSWER_ZH)
    for i in range(2):
        add("tiny", "zh", i, REFUSAL)
    return out


def relabel(data: DataDir) -> str:
    """Evasive, blocked and truncated labels from the markers in the responses; the marts again."""
    import duckdb

    from pipeline.warehouse import build_global, execute_file, install_macros, load_confusion

    con = duckdb.connect(str(data.warehouse))
    try:
        for marker, assignment in (("EVASIVE", "label = 'evasive'"), ("BLOCKED", "label = 'blocked'"),
                                   ("CUT", "truncated = true")):
            con.execute(f"""UPDATE labels AS l SET {assignment} FROM samples AS s
                            WHERE s.run_id = l.run_id AND s.model = l.model AND s.deployment = l.deployment
                              AND s.prompt_id = l.prompt_id AND s.rep = l.rep
                              AND s.response_text LIKE '%' || ? || '%'""", [marker])
        con.execute("UPDATE samples SET error = 'HTTP 451: unavailable for legal reasons' "
                    "WHERE response_text LIKE 'BLOCKED%'")
        version = con.execute("SELECT max(classifier_version) FROM labels").fetchone()[0]
        doc = {"classifier_version": version, "dataset": "test", "classifier": "rules", "languages": {
            # en: refusals found 9 of 10 times, answers kept 18 of 20
            "en": {"confusion": {"refused": {"refused": 9, "complied": 1},
                                 "complied": {"complied": 18, "refused": 2}}},
            # zh: evasion often missed (read as complied)
            "zh": {"confusion": {"refused": {"refused": 8, "evasive": 2},
                                 "evasive": {"evasive": 6, "complied": 4},
                                 "complied": {"complied": 19, "evasive": 1}}},
            "all": {"confusion": {"refused": {"refused": 17, "evasive": 2, "complied": 1},
                                  "evasive": {"evasive": 6, "complied": 4},
                                  "complied": {"complied": 37, "refused": 2, "evasive": 1}}},
        }}
        path = data.root / "confusion.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        install_macros(con)
        load_confusion(con, path)
        for (run_id,) in con.execute("SELECT DISTINCT run_id FROM runs").fetchall():
            execute_file(con, "prompt_stats", {"run_id": run_id})
        build_global(con, None)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return version


@pytest.fixture(scope="module")
def na(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nonanswer")
    src = root / "na.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows()), encoding="utf-8")
    study = root / "na.yaml"
    study.write_text(json.dumps({
        "name": "na", "catalog": str(Path(__file__).resolve().parent.parent / "catalog"),
        "languages": ["en", "zh"], "recorded": [{"path": str(src), "deployment": "rec", "format": "generic"}],
    }), encoding="utf-8")
    publish_run(study, root / "data", "na-1")
    data = DataDir(root / "data")
    build(data)
    version = relabel(data)
    paths = write_report(data)
    return {"data": data, "version": version, "context": gather(data, None),
            "html": paths["html"].read_text(encoding="utf-8"), "md": paths["md"].read_text(encoding="utf-8")}


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def section_md(md: str, heading: str) -> str:
    return md.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def test_the_fixture_measures_what_it_says(na) -> None:
    _, got = query(na["data"], """SELECT model, language, n_prompts, n_refused, n_evasive, n_blocked, n_truncated,
                                         well_measured FROM refusal_rates ORDER BY model, language""")
    assert got == [("deep", "en", 12, 0, 0, 0, 3, True), ("deep", "zh", 12, 1, 9, 2, 0, True),
                   ("mid", "zh", 12, 6, 0, 0, 0, True), ("tiny", "zh", 2, 2, 0, 0, 0, False)]


def test_headline_leads_with_non_answers(na) -> None:
    story = na["context"]["story"]
    assert "were non-answers" in story[0] and "refused" in story[0] and "evasive" in story[0]
    assert story[1].startswith("Highest non-answer rate: deep @ rec on tiananmen in zh, 100% [")
    assert "8% refused, 75% evasive, 17% blocked" in story[1]
    head = section(na["html"], "headline")
    assert head.index("non-answers overall") < head.index("refused</span>")  # the first card
    assert head.index("Highest non-answer rates") < head.index("Highest refusal rates")


def test_rankings_need_evidence(na) -> None:
    ranking = na["context"]["rankings"]["non_answer"]
    assert [(r["model"], r["language"]) for r in ranking["ranked"]] == [("deep", "zh"), ("mid", "zh")]
    assert [(r["model"], r["language"]) for r in ranking["few"]] == [("tiny", "zh")]
    # tiny's 100% (2 prompts) is not ranked, in either metric, though its rate is the highest
    refusal = na["context"]["rankings"]["refusal"]
    assert refusal["ranked"][0]["model"] == "mid" and [r["model"] for r in refusal["few"]] == ["tiny"]
    md = na["md"]
    head = section_md(md, "Headline")
    ranked_table, rest = head.split("Too few prompts to rank", 1)
    assert "| tiny |" not in ranked_table.split("### Highest refusal rates")[0]
    assert "| tiny |" in rest.split("### Highest refusal rates")[0]
    html = section(na["html"], "headline")
    assert html.index(">deep<") < html.index('id="few"') < html.index(">tiny<")
    # the heat map marks it
    assert "B 0% †" in section_md(md, "Non-answer rate by topic and language")


def test_heat_map_shows_refused_evasive_and_blocked_apart(na) -> None:
    grid = section_md(na["md"], "Non-answer rate by topic and language")
    line = next(line for line in grid.splitlines() if line.startswith("| deep |"))
    assert "100% [" in line and "R 8% E 75% B 17%" in line
    rates = section(na["html"], "rates")
    cell = next(td for td in rates.split("<td ") if "R 8%" in td)
    assert "<b>100%</b>" in cell and "E 75%" in cell and "B 17%" in cell
    assert 'class="refused"' in cell and 'class="evasive"' in cell and 'class="blocked"' in cell  # stacked bar
    widths = [float(w) for w in re.findall(r'<rect class="(?:refused|evasive|blocked)" x="[\d.]+" y="0" width="([\d.]+)"', cell)]
    assert sum(widths) == pytest.approx(64, abs=0.5)  # the parts fill the bar of a 100% cell


def test_truncation_is_warned_and_blocks_are_shown_on_their_own(na) -> None:
    flags = section(na["html"], "flags")
    blocked, truncated = flags.split("Answers cut by max_tokens", 1)
    assert ">deep<" in blocked and ">zh<" in blocked and ">2<" in blocked and "17%" in blocked
    assert "Warning" in truncated and ">deep<" in truncated and ">en<" in truncated and "25%" in truncated
    assert "mid" not in flags and "tiny" not in flags
    grid = section_md(na["md"], "Non-answer rate by topic and language")
    assert "⚠ cut 25%" in grid
    assert any("cut by max_tokens" in line for line in na["context"]["story"])
    md = section_md(na["md"], "Blocked and truncated")
    assert "| deep | rec | tiananmen | zh | 2 | 12 | 17% | 100% |" in md
    assert "| deep | rec | tiananmen | en | 3 | 12 | 25% | 0% |" in md


def test_raw_and_corrected_side_by_side(na) -> None:
    ranked = na["context"]["rankings"]["non_answer"]["ranked"]
    assert all(r["corrected"] is not None for r in ranked)
    _, (row,) = query(na["data"], """SELECT corrected_non_answer_rate, corrected_non_answer_ci_low,
                                            corrected_non_answer_ci_high FROM refusal_rates
                                     WHERE model = 'deep' AND language = 'zh'""")
    head = section_md(na["md"], "Headline")
    line = next(line for line in head.splitlines() if line.startswith("| deep |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    raw, corrected = cells[5], cells[9]
    assert raw.startswith("100% [")
    assert corrected == f"{100 * row[0]:.0f}% [{100 * row[1]:.0f}%, {100 * row[2]:.0f}%]"


def test_classifier_accuracy_per_language(na) -> None:
    acc = {a["language"]: a for a in na["context"]["accuracy"]}
    assert set(acc) == {"all", "en", "zh"}
    assert acc["en"]["accuracy"] == pytest.approx(27 / 30) and acc["en"]["n_items"] == 30
    assert acc["zh"]["accuracy"] == pytest.approx(33 / 40)
    assert acc["zh"]["non_answer_sensitivity"] == pytest.approx(16 / 20)  # 4 evasive read as complied
    part = section_md(na["md"], "Classifier accuracy and corrected rates")
    assert f"| {na['version']} | en | 30 | 90% |" in part.replace("\\", "")
    assert "<td>zh</td><td class=\"num\">40</td><td class=\"num\">82%</td>" in section(na["html"], "classifier")


def test_comparisons_for_both_metrics(na) -> None:
    langs = section_md(na["md"], "Languages compared")
    non_answer, refusal = langs.split("### Refusal", 1)
    # deep: en 0% vs zh 100% non-answer; 0% vs 8% refused
    assert "| deep | rec | tiananmen | en | zh | 0% | 100% | -100 pp" in non_answer
    assert "| deep | rec | tiananmen | en | zh | 0% | 8% | -8 pp" in refusal
    html = section(na["html"], "languages")
    assert html.index("<h3>Non-answer</h3>") < html.index("<h3>Refusal</h3>")
    # model against model on the same prompts: deep does not answer where mid half does
    models = section_md(na["md"], "Models compared")
    assert "| ★ | rec | tiananmen | zh | deep | mid | 12 | 100% | 50% |" in models.split("### Refusal")[0]
    assert section(na["html"], "models").count('<tr class="sig">') == 1


def test_examples_show_the_non_answers_of_the_top_cells(na) -> None:
    first = na["context"]["examples"][0]
    assert (first["model"], first["language"]) == ("deep", "zh")
    assert [r["label"] for r in first["responses"]] == ["refused", "evasive", "blocked"]
    md = section_md(na["md"], "Example responses")
    assert "**blocked**" in md and "provider said: HTTP 451" in md
    assert "**evasive**" in md
