"""The PII stage: Presidio findings masked, removed or flagged, counted by type, never leaked."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pytest
from pydantic import ValidationError

from conftest import TEST_DATA, read_jsonl, write_dataset
from tamis import metrics, pii_recognizers, report
from tamis.dataset import Dataset
from tamis.pii_recognizers import MIN_PHONE_DIGITS, at_stretches, cn_resident_id_is_valid, phone_runs
from tamis.runner import run_stage
from tamis.stages import stage_class
from tamis.stages.pii import PiiMask

PRESIDIO_SYNTH = TEST_DATA / "pii" / "presidio_synth_v2.jsonl.gz"
# One real sentence of Presidio's synthetic set per entity type the stage covers.
SENTENCE_IDS = {
    "EMAIL_ADDRESS": "presidio-00034",
    "PHONE_NUMBER": "presidio-00084",
    "CREDIT_CARD": "presidio-00005",
    "IP_ADDRESS": "presidio-00422",
    "IBAN_CODE": "presidio-00155",
    "US_SSN": "presidio-00007",
}
VALID_CN_ID = "11010519491231002X"  # the worked example of GB 11643-1999
INVALID_CN_ID = "110105194912310021"  # same number, wrong check character
CN_MOBILES = ("138 0013 8000", "+86 138-0013-8000", "13912345678")


@pytest.fixture(scope="module")
def synth() -> dict[str, dict]:
    records = read_jsonl(PRESIDIO_SYNTH)
    return {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def masker() -> PiiMask:
    return PiiMask()


def records(texts: list, source: str = "web") -> pa.Table:
    return pa.table(
        {
            "id": [f"{source}/{i}" for i in range(len(texts))],
            "source": [source] * len(texts),
            "date": ["2026-11-20"] * len(texts),
            "url": [None] * len(texts),
            "text": pa.array(texts, pa.string()),
        }
    )


def gold_values(record: dict, label: str) -> list[str]:
    return [s["value"] for s in record["spans"] if s["label"] == label]


def test_registry_names_the_stage_and_yaml_params_build_it(make_pipeline):
    assert stage_class("pii") is PiiMask
    pipeline = make_pipeline({"web": {"path": "web"}}, stages={"pii": {"action": "remove", "phone_regions": ["CN"]}})
    stage = pipeline.stage("pii")
    assert isinstance(stage, PiiMask)
    assert (stage.params.action, stage.params.phone_regions) == ("remove", ["CN"])


@pytest.mark.parametrize("entity", sorted(SENTENCE_IDS))
def test_each_entity_type_is_masked_in_a_real_sentence(masker, synth, entity):
    record = synth[SENTENCE_IDS[entity]]
    result = masker.process_batch(records([record["text"]]))
    text = result.kept.column("text")[0].as_py()
    assert f"<{entity}>" in text
    for value in gold_values(record, entity):
        assert value not in text
    assert result.metrics[f"pii.entity.{entity}"] == len(gold_values(record, entity))
    assert result.kept.column("pii_count")[0].as_py() >= 1


def test_chinese_mobile_numbers_are_masked(masker):
    texts = [f"请拨打{m}联系我" for m in CN_MOBILES] + [f"Call me on {m} tomorrow." for m in CN_MOBILES]
    result = masker.process_batch(records(texts))
    for original, masked in zip(texts, result.kept.column("text").to_pylist()):
        assert "<PHONE_NUMBER>" in masked, original
        assert not any(m in masked for m in CN_MOBILES)
    assert result.metrics["pii.entity.PHONE_NUMBER"] == len(texts)


def test_cn_resident_id_checksum_decides():
    assert cn_resident_id_is_valid(VALID_CN_ID)
    assert cn_resident_id_is_valid(VALID_CN_ID.lower())
    assert not cn_resident_id_is_valid(INVALID_CN_ID)
    assert not cn_resident_id_is_valid("110105194902301234")  # 30 February


def test_cn_resident_id_masked_only_with_a_valid_checksum():
    stage = PiiMask({"entities": ["CN_RESIDENT_ID"]})
    texts = [f"身份证号{VALID_CN_ID}，请核对。", f"身份证号{INVALID_CN_ID}，请核对。", f"ID {VALID_CN_ID}0 is too long"]
    result = stage.process_batch(records(texts))
    masked = result.kept.column("text").to_pylist()
    assert masked[0] == "身份证号<CN_RESIDENT_ID>，请核对。"
    assert masked[1] == texts[1]
    assert masked[2] == texts[2]
    assert result.metrics["pii.entity.CN_RESIDENT_ID"] == 1


def test_mask_template_is_configurable(synth):
    record = synth[SENTENCE_IDS["EMAIL_ADDRESS"]]
    result = PiiMask({"mask": "[{entity}-REDACTED]"}).process_batch(records([record["text"]]))
    assert "[EMAIL_ADDRESS-REDACTED]" in result.kept.column("text")[0].as_py()


def test_remove_drops_documents_with_pii_and_keeps_the_rest(synth):
    clean = "What are my options?"
    texts = [synth[SENTENCE_IDS["CREDIT_CARD"]]["text"], clean, synth[SENTENCE_IDS["US_SSN"]]["text"]]
    result = PiiMask({"action": "remove"}).process_batch(records(texts))
    assert result.kept.column("text").to_pylist() == [clean]
    assert result.dropped.column("reason").to_pylist() == ["pii_found", "pii_found"]
    assert result.dropped.column("detail").to_pylist() == ["CREDIT_CARD=1", "US_SSN=1"]
    assert result.kept.column("pii_count").to_pylist() == [0]


def test_flag_keeps_text_and_points_at_each_finding(synth):
    record = synth["presidio-00032"]  # a card number and an e-mail address
    result = PiiMask({"action": "flag"}).process_batch(records([record["text"]]))
    row = result.kept.to_pylist()[0]
    assert row["text"] == record["text"]
    assert row["pii_count"] == 2
    assert row["pii_types"] == "CREDIT_CARD,EMAIL_ADDRESS"
    flagged = {(s["entity"], record["text"][s["start"] : s["end"]]) for s in row["pii_spans"]}
    gold = {(s["label"], s["value"]) for s in record["spans"] if s["label"] in ("CREDIT_CARD", "EMAIL_ADDRESS")}
    assert flagged == gold


def test_private_ip_addresses_are_kept_unless_asked(synth):
    text = "the build server 192.168.0.12 and the public host 41.173.96.26"
    default = PiiMask({"entities": ["IP_ADDRESS"]}).process_batch(records([text]))
    assert default.kept.column("text")[0].as_py() == "the build server 192.168.0.12 and the public host <IP_ADDRESS>"
    every = PiiMask({"entities": ["IP_ADDRESS"], "ip_public_only": False}).process_batch(records([text]))
    assert every.kept.column("text")[0].as_py() == "the build server <IP_ADDRESS> and the public host <IP_ADDRESS>"


def test_numbers_that_are_not_phones_are_left_alone(masker):
    texts = [
        "ISBN 0-393-02895-5 (paperback)",
        "the coefficients were 0.235  -0.685 and 1.173  -1.205",
        "lat -12.0033292770385 lon -77.0323486328125",
        "digits 0 3 4 5 1 6 2 7 2 5 3 4",
    ]
    result = masker.process_batch(records(texts))
    assert result.kept.column("text").to_pylist() == texts
    assert result.metrics["pii.findings"] == 0


def test_bad_input_has_a_clear_outcome(masker):
    texts = ["", "   \n\t ", "😀🎉🙈", None, "ሰላም ለዓለም፤ ኢሜል፦ abebe.kebede@example.com ነው።"]
    result = masker.process_batch(records(texts))
    assert result.kept.num_rows == len(texts)
    out = result.kept.to_pylist()
    assert [r["text"] for r in out[:4]] == texts[:4]
    assert [r["pii_count"] for r in out] == [0, 0, 0, 0, 1]
    assert out[4]["text"] == "ሰላም ለዓለም፤ ኢሜል፦ <EMAIL_ADDRESS> ነው።"
    assert result.metrics["pii.docs_screened_out"] == 4


def test_one_megabyte_single_line_is_scanned_in_chunks():
    words = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000]
    stage = PiiMask({"chunk_chars": 100_000, "chunk_overlap": 256})
    boundary = 100_000 - 256 - 10  # an address that straddles the first chunk's end
    text = "a.b@example.com " + words[:boundary] + " straddle.me@example.org " + words[boundary:] + " end@example.net"
    assert "\n" not in text and len(text) > 1_000_000
    result = stage.process_batch(records([text]))
    masked = result.kept.column("text")[0].as_py()
    assert "@" not in masked
    assert masked.count("<EMAIL_ADDRESS>") == 3
    assert result.metrics["pii.entity.EMAIL_ADDRESS"] == 3


def test_text_over_max_chars_is_dropped_unscanned():
    text = "reach me at someone@example.com " * 10
    result = PiiMask({"max_chars": 100}).process_batch(records([text, "short and clean"]))
    assert result.kept.column("text").to_pylist() == ["short and clean"]
    assert result.dropped.column("reason").to_pylist() == ["pii_too_long"]
    assert "someone" not in result.dropped.column("detail")[0].as_py()


NETWORK_PROBE = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(1)
    raise OSError("network access attempted")
socket.getaddrinfo = socket.create_connection = refuse
import pyarrow as pa
from tamis.stages.pii import PiiMask
table = pa.table({"id": ["a"], "source": ["web"], "text": [sys.argv[1]]})
result = PiiMask({"entities": ["EMAIL_ADDRESS"]}).process_batch(table)
print(result.metrics["pii.entity.EMAIL_ADDRESS"], len(attempts))
"""


def test_detection_never_touches_the_network(tmp_path, synth):
    # A fresh process with an empty tldextract cache: Presidio's own e-mail validator
    # would try to download the public suffix list here.
    env = {**os.environ, "TLDEXTRACT_CACHE": str(tmp_path / "tldextract"), "XDG_CACHE_HOME": str(tmp_path)}
    text = synth[SENTENCE_IDS["EMAIL_ADDRESS"]]["text"]
    out = subprocess.run(
        [sys.executable, "-c", NETWORK_PROBE, text], env=env, capture_output=True, text=True, check=True
    )
    found, attempts = out.stdout.split()
    assert (found, attempts) == ("1", "0")


def test_params_are_checked():
    with pytest.raises(ValidationError, match="unknown PII entity types"):
        PiiMask({"entities": ["EMAIL", "PHONE_NUMBER"]})
    with pytest.raises(ValidationError, match="need a spaCy NER model"):
        PiiMask({"entities": ["LOCATION"]})
    with pytest.raises(ValidationError, match="not a valid template"):
        PiiMask({"mask": "<{kind}>"})
    stage = PiiMask({"entities": ["LOCATION", "EMAIL_ADDRESS"], "ner_model": "xx_no_such_spacy_model"})
    with pytest.raises(ValueError, match="neither an installed spaCy package"):
        stage.check_ready()


@pytest.mark.parametrize("action", ["mask", "remove", "flag"])
def test_counts_reconcile_and_no_pii_value_leaks(tmp_path, synth, caplog, action):
    chosen = [synth[i] for i in sorted(SENTENCE_IDS.values())] + [synth["presidio-00001"], synth["presidio-00032"]]
    texts = [r["text"] for r in chosen] + [f"手机 {CN_MOBILES[0]}，身份证 {VALID_CN_ID}", ""]
    secrets = [s["value"] for r in chosen for s in r["spans"] if s["label"] in SENTENCE_IDS]
    secrets += [CN_MOBILES[0], VALID_CN_ID]
    write_dataset(tmp_path / "in", records(texts))

    caplog.set_level(logging.DEBUG)
    manifest = run_stage(PiiMask({"action": action}), str(tmp_path / "in"), str(tmp_path / "out"), workers=1)

    counts = manifest["counts"]
    assert counts["in"] == len(texts) == counts["kept"] + counts["dropped"] + counts["quarantined"]
    out = Dataset(str(tmp_path / "out"))
    kept = out.read()
    assert kept.num_rows == counts["kept"]
    metrics = manifest["metrics"]
    by_type = {k: v for k, v in metrics.items() if k.startswith("pii.entity.")}
    assert sum(by_type.values()) == metrics["pii.findings"] >= len(secrets)
    if action == "remove":
        assert counts["dropped"] == metrics["pii.docs_with_pii"] == manifest["drop_reasons"]["pii_found"]
        assert set(kept.column("pii_count").to_pylist()) == {0}
    else:
        assert counts["kept"] == len(texts)
        assert sum(kept.column("pii_count").to_pylist()) == metrics["pii.findings"]

    side_tables = [out.read_side("dropped").to_pylist(), out.read_side("quarantine").to_pylist()]
    commits = [p.read_text(encoding="utf-8") for p in (tmp_path / "out").rglob("*.json")]
    exposed = [json.dumps([manifest, side_tables], ensure_ascii=False), caplog.text, *commits]
    if action != "flag":
        exposed.append(json.dumps(kept.column("text").to_pylist(), ensure_ascii=False))
    for secret in secrets:
        for where in exposed:
            assert secret not in where


def test_worker_processes_set_the_stage_up_themselves_and_mask_as_one_process_does(synth, tmp_path):
    texts = [
        synth[SENTENCE_IDS[entity]]["text"] for entity in ("IBAN_CODE", "EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER")
    ]
    parts = {f"part_{i}": records([text]).set_column(0, "id", pa.array([f"web/{i}"])) for i, text in enumerate(texts)}
    source = write_dataset(tmp_path / "in", parts)
    one = run_stage(PiiMask(), source, str(tmp_path / "one"), workers=1)
    two = run_stage(PiiMask(), source, str(tmp_path / "two"), workers=2)
    assert [p["sha256"] for p in two["parts"]] == [p["sha256"] for p in one["parts"]]
    masked = Dataset(str(tmp_path / "two")).read(columns=["text"]).column("text").to_pylist()
    assert "<IBAN_CODE>" in masked[0] and "<EMAIL_ADDRESS>" in masked[1]


def test_presidio_messages_never_carry_their_arguments(masker, caplog):
    masker.process_batch(records(["mail a.b@example.com"]))  # sets up Presidio's loggers
    caplog.set_level(logging.DEBUG)
    # The message Presidio's IBAN validator logs when a candidate fails to parse.
    logging.getLogger("presidio-analyzer").error("Failed to validate text %s", "GB59IFUE40226315499137")
    assert "presidio-analyzer ERROR" in caplog.text
    assert "GB59IFUE40226315499137" not in caplog.text


def test_ner_entities_come_from_a_local_spacy_pipeline(tmp_path, synth):
    import spacy

    record = synth["presidio-00002"]  # two people's names
    names = gold_values(record, "PERSON")
    # A rule-based English pipeline saved on disk: the NER path runs with nothing downloaded.
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": name} for name in names])
    nlp.to_disk(tmp_path / "ner")
    stage = PiiMask({"entities": ["PERSON", "EMAIL_ADDRESS"], "ner_model": str(tmp_path / "ner")})
    stage.check_ready()
    texts = [record["text"], "no names here, write to team@example.org"]
    result = stage.process_batch(records(texts))
    masked = result.kept.column("text").to_pylist()
    assert masked[0].count("<PERSON>") == len(names) == 2
    assert not any(name in masked[0] for name in names)
    assert masked[1] == "no names here, write to <EMAIL_ADDRESS>"
    assert (result.metrics["pii.entity.PERSON"], result.metrics["pii.entity.EMAIL_ADDRESS"]) == (2, 1)


# Look-alikes in running text: numbers that a digit-run matcher would take for phone
# numbers, cards, SSNs or IP addresses, but that the words around them show are not.
LOOK_ALIKES = {
    "versions": "Upgrade the agent to 4.10.2.1 before Friday; release v2.4.16.3 fixed the installer.",
    "dates": "The hearing moved from 2021-06-17 to 17.06.2022 and then to 06/17/2023 after the appeal.",
    "isbns": "The paperback is ISBN 978-0-393-02895-3 and the first edition ISBN 0-393-02895-5.",
    "uuids": "Request 550e8400-e29b-41d4-a716-446655440000 failed, retry job 6ba7b810-9dad-11d1-80b4-612345678901 later.",
    "hashes": "The archive's sha256 is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 and commit 4f2a9c1 built it.",
    "order numbers": "Your order number 4417238590 has shipped; order #415-555-0198 is still pending (invoice no. 2023 0045 1187).",
    "prices": "The laptop now costs $4,155,552.67 at auction, up from € 2.345.678,00 last spring.",
    "arithmetic": "Check it by hand: 1234 * 5678 = 7006652, and 5551234 - 1000000 = 4551234.",
    "coordinates": "The summit is at 27.9881, 86.9250; the camp at -12.0033292770385, -77.0323486328125.",
    "private and documentation IPs": "Point the client at 192.168.100.200 or 10.20.30.40; the manual uses 203.0.113.195 and 198.51.100.42.",
}


@pytest.mark.parametrize("kind", sorted(LOOK_ALIKES))
def test_look_alikes_in_running_text_are_not_pii(masker, kind):
    text = LOOK_ALIKES[kind]
    result = masker.process_batch(records([text]))
    assert result.kept.column("text")[0].as_py() == text
    assert result.metrics["pii.findings"] == 0


def test_phone_numbers_need_phone_context_or_format(masker):
    texts = [
        "Call me at 4155552671 after six.",  # context, no format
        "Our office: (415) 555-2671, ask for the front desk.",  # format
        "Reference 4155552671 was closed last week.",  # a bare run with neither
    ]
    masked = masker.process_batch(records(texts)).kept.column("text").to_pylist()
    assert masked == [
        "Call me at <PHONE_NUMBER> after six.",
        "Our office: <PHONE_NUMBER>, ask for the front desk.",
        "Reference 4155552671 was closed last week.",
    ]


def test_bare_ssn_only_with_ssn_context(masker):
    texts = [
        "Her SSN is 536228726, please keep it private.",
        "Parcel 536228726 was delivered to the back door.",
        "Social security number: 536-22-8726.",
    ]
    masked = masker.process_batch(records(texts)).kept.column("text").to_pylist()
    assert masked == [
        "Her SSN is <US_SSN>, please keep it private.",
        "Parcel 536228726 was delivered to the back door.",
        "Social security number: <US_SSN>.",
    ]


def test_full_width_values_are_found_and_the_text_around_them_is_kept(masker):
    # Full-width digits, "＋", "＠" and "．" fold to ASCII for detection; the ideographic
    # space and the full-width colon around the values stay as they were.
    text = "電話：＋１ ４１５ ５５５ ２６７１　メール：ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ　まで"
    result = masker.process_batch(records([text]))
    assert result.kept.column("text")[0].as_py() == "電話：<PHONE_NUMBER>　メール：<EMAIL_ADDRESS>　まで"
    flagged = PiiMask({"action": "flag"}).process_batch(records([text])).kept.to_pylist()[0]
    values = {s["entity"]: text[s["start"] : s["end"]] for s in flagged["pii_spans"]}
    assert values == {
        "PHONE_NUMBER": "＋１ ４１５ ５５５ ２６７１",
        "EMAIL_ADDRESS": "ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ",
    }


def test_each_value_gets_its_own_mask_and_the_text_between_is_kept(masker):
    text = "Write to ana@example.com bob@example.org or call 415-555-2671, 415-555-2672 today."
    result = masker.process_batch(records([text]))
    assert result.kept.column("text")[0].as_py() == (
        "Write to <EMAIL_ADDRESS> <EMAIL_ADDRESS> or call <PHONE_NUMBER>, <PHONE_NUMBER> today."
    )
    assert result.metrics["pii.entity.EMAIL_ADDRESS"] == result.metrics["pii.entity.PHONE_NUMBER"] == 2


def _span_scores(stage: PiiMask, synth: dict, entity: str) -> tuple[float, float]:
    """Precision and recall of ``entity`` on the labelled set, spans matched by overlap."""
    gold_n = recalled = found_n = right = 0
    for record in synth.values():
        gold = [(s["start"], s["end"]) for s in record["spans"] if s["label"] == entity]
        found = [(r.start, r.end) for r in stage.find(record["text"]) if r.entity_type == entity]
        gold_n += len(gold)
        found_n += len(found)
        recalled += sum(any(s < ge and gs < e for s, e in found) for gs, ge in gold)
        right += sum(any(s < ge and gs < e for gs, ge in gold) for s, e in found)
    return right / found_n, recalled / gold_n


def test_names_and_street_addresses_are_found_on_the_labelled_set(masker, synth):
    # Presidio's synthetic sentences: names of many countries, addresses of many formats.
    # The floors sit a little under what benchmarks/pii_accuracy.py measures.
    precision, recall = _span_scores(masker, synth, "PERSON")
    assert precision >= 0.8 and recall >= 0.8
    precision, recall = _span_scores(masker, synth, "STREET_ADDRESS")
    assert precision >= 0.95 and recall >= 0.5


def test_names_in_context_are_masked(masker):
    texts = [
        "Dear Mrs. Okonkwo, thank you for your letter.",
        "Kenneth Harrison lives at 12 Oak Street, Apt. 4 with his sister.",
        "Founders: Kaczmarek, Becker and Vasquez met James in Oslo.",
    ]
    masked = masker.process_batch(records(texts)).kept.column("text").to_pylist()
    assert masked == [
        "Dear Mrs. <PERSON>, thank you for your letter.",
        "<PERSON> lives at <STREET_ADDRESS> with his sister.",
        "Founders: <PERSON>, <PERSON> and <PERSON> met <PERSON> in Oslo.",
    ]


def test_a_name_that_names_a_place_is_not_a_person(masker):
    texts = [
        "Five Alabama counties, including Jefferson County, adopted the system.",
        "Come on down to Robin Park Leisure Centre on Saturday.",
        "He moved from Los Angeles to Las Vegas in 1990.",
        "Thomas Jefferson won the vote, and Jefferson said so.",
        "Benito Juárez was president of Mexico.",
    ]
    masked = masker.process_batch(records(texts)).kept.column("text").to_pylist()
    assert masked[:3] == texts[:3]
    assert masked[3:] == ["<PERSON> won the vote, and <PERSON> said so.", "<PERSON> was president of Mexico."]


def test_entity_metrics_feed_the_report_and_the_detection_rate(tmp_path, synth, monkeypatch):
    chosen = [synth[i] for i in sorted(SENTENCE_IDS.values())] + [synth["presidio-00002"], synth["presidio-00001"]]
    texts = [r["text"] for r in chosen]
    write_dataset(tmp_path / "in", records(texts))
    monkeypatch.delenv("TAMIS_STATSD_HOST", raising=False)
    monkeypatch.setenv("TAMIS_PROMETHEUS_TEXTFILE_DIR", str(tmp_path / "prom"))
    (tmp_path / "prom").mkdir()
    manifest = run_stage(PiiMask({"action": "flag"}), str(tmp_path / "in"), str(tmp_path / "run" / "pii"), workers=1)

    # What the stage flagged, read from its output: the truth the metrics must tell.
    kept = Dataset(str(tmp_path / "run" / "pii")).read()
    flagged = Counter(s["entity"] for spans in kept.column("pii_spans").to_pylist() for s in spans)
    assert len(flagged) >= 6 and sum(flagged.values()) == manifest["metrics"]["pii.findings"]
    assert report.pii_counts(manifest) == dict(flagged)
    stage_report = report.run_report(str(tmp_path / "run"), ["pii"])["stages"][0]
    assert stage_report["pii"] == dict(flagged)
    assert not {"docs_analysed", "docs_with_pii", "findings", "docs_screened_out"} & set(stage_report["pii"])

    rate = sum(flagged.values()) / manifest["counts"]["in"]
    assert metrics.stage_metrics(manifest)["tamis_pii_detection_rate"] == pytest.approx(rate)
    (prom,) = (tmp_path / "prom").glob("*.prom")
    line = next(x for x in prom.read_text().splitlines() if x.startswith("tamis_pii_detection_rate{"))
    assert float(line.split()[-1]) == pytest.approx(rate, rel=1e-5)


def test_the_stretches_around_at_signs_are_the_whitespace_free_runs_a_pattern_scan_finds():
    pattern = re.compile(r"[^\s@]*@\S*")
    rng = random.Random(7)
    texts = ["", "@", "a@b c@d", "x@@y", " @ ", "mail me at ann@example.com, or bob@x.org\tnow"]
    texts += ["".join(rng.choice("ab@ \n\t.x") for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    for text in texts:
        assert list(at_stretches(text)) == [m.span() for m in pattern.finditer(text)], text


def whole_text_findings(recognizer, text: str) -> list[tuple[int, int, float]]:
    """What a screened recognizer finds when it reads ``text`` as one window (its own
    checks before and after included), in text order."""
    windows = type(recognizer)._windows
    type(recognizer)._windows = lambda self, text: iter([(0, len(text))])
    try:
        return sorted((r.start, r.end, r.score) for r in recognizer.analyze(text, recognizer.supported_entities))
    finally:
        type(recognizer)._windows = windows


def test_ip_addresses_found_in_the_runs_around_screen_hits_are_those_of_the_whole_text():
    from tamis.pii_recognizers import ScreenedIpRecognizer

    recognizer = ScreenedIpRecognizer(public_only=True)
    pieces = [
        "8.8.8.8",
        "192.168.1.1",
        "2001:db8::1",
        "2606:4700:4700::1111",
        "::",
        "::ffff:1.2.3.4",
        "fe80::1",
        "std::vector",
        "a:b:",
        "1.2.3.4/24",
        "version ",
        "v",
        "x",
        "=",
        " ",
        "\n",
        "\t",
        "(",
        ")",
        ",",
        ":",
    ]
    rng = random.Random(11)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    found_any = 0
    for text in texts:
        runs = sorted((r.start, r.end, r.score) for r in recognizer.analyze(text, ["IP_ADDRESS"]))
        assert runs == whole_text_findings(recognizer, text), text
        found_any += bool(runs)
    assert found_any > 100


# What a capitalised word is, as the regular expression the native word finder implements.
_UP, _LO = pii_recognizers._UP, pii_recognizers._LO
_NAME_TOKEN = re.compile(
    rf"{_UP}{_LO}+(?:(?:(?<=Mc)|(?<=Mac)|(?<=De)|(?<=Di)|(?<=Le)|(?<=La)){_UP}{_LO}+)?"
    rf"(?:(?:['’](?!s(?![^\W\d_]))|-){_UP}?{_LO}+)*"
)


def test_the_native_word_finder_finds_the_matches_of_the_name_pattern():
    import numpy as np

    texts = [r["text"] for r in read_jsonl(TEST_DATA / "multilingual" / "udhr_unicode_388docs.jsonl.gz")]
    texts += [r["text"] for r in read_jsonl(TEST_DATA / "web_en" / "wikipedia_en_sample.jsonl.gz", 300)]
    texts += [r["text"] for r in read_jsonl(TEST_DATA / "code" / "code_00.jsonl.gz", 100)]
    pieces = ["Mc", "Mac", "De", "Di", "Le", "La", "Donald", "O", "'", "’", "s", "-", "Smith", "x", "É", "é", "Ωμ",
              "Жан", " ", "\n", "2", "_", "²", "ß", "A", "b", "s's", "'S", "Ǆ", "ǅ", "\U0001d400", "Ⅻ", "ⅻ"]  # fmt: skip
    rng = random.Random(5)
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(20000)]
    texts += ["", "A", "Ab", "Smith's", "O'Brien's", "McDonald-Jones", "d'Artagnan", "MacAdam", "DeSantis's x"]
    found = 0
    for text in texts:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        start, end = pii_recognizers.name_token_spans(codes)
        expected = [m.span() for m in _NAME_TOKEN.finditer(text)]
        assert list(zip(start.tolist(), end.tolist())) == expected, text
        found += len(expected)
    assert found > 50_000


@pytest.mark.parametrize(
    "recognizer", ["CardRecognizer", "ScreenedUsSsnRecognizer", "ScreenedIbanRecognizer", "CnResidentIdRecognizer"]
)
def test_the_lines_around_screen_hits_give_the_matches_of_the_whole_text(recognizer):
    found = getattr(pii_recognizers, recognizer)()
    pieces = ["4111 1111 1111 1111", "4111111111111111", "5500-0000-0000-0004", "536-22-8726", "536228726",
              "536 22 8726", "GB82 WEST 1234 5698 7654 32", "gb82 west 1234 5698 7654 32", "DE89370400440532013000", "11010519491231002X",
              "ssn ", "SSN: ", "12", "3456", "-", "/", ":", " ", "\n", "\n\n", "\r\n", "x", "AB", "ID "]  # fmt: skip
    rng = random.Random(13)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 20))) for _ in range(3000)]
    hits = 0
    for text in texts:
        expected = whole_text_findings(found, text)
        assert sorted((r.start, r.end, r.score) for r in found.analyze(text, found.supported_entities)) == expected, (
            text
        )
        hits += bool(expected)
    assert hits > 150


def test_phone_runs_are_the_maximal_digit_runs_long_enough_to_hold_a_number():
    every_run = re.compile(r"[0-9](?:[ \t]?[().\-/]?[ \t]?[0-9])+")
    the_regex = re.compile(r"[0-9](?:[ \t]?[().\-/]?[ \t]?[0-9]){%d,}" % (MIN_PHONE_DIGITS - 1))
    rng = random.Random(17)
    alphabet = ["0123456789"] * 8 + [
        " ",
        "\t",
        "(",
        ")",
        ".",
        "-",
        "/",
        "x",
        "\n",
        "+",
        "٣",
        "é",
        "\u3000",
        "\U0001f4de",
    ]
    texts = ["".join(rng.choice(rng.choice(alphabet)) for _ in range(rng.randint(0, 60))) for _ in range(20000)]
    long_enough = 0
    for text in texts:
        expected = [m.span() for m in every_run.finditer(text) if sum(c in "0123456789" for c in m.group()) >= 7]
        assert [m.span() for m in the_regex.finditer(text)] == expected, text
        assert phone_runs(text) == expected, text
        long_enough += len(expected)
    assert long_enough > 1000


def test_numbered_streets_read_on_the_lines_of_street_type_words_are_those_of_the_whole_text():
    # Where the batch's capitalised words put street types is all the recognizer reads for
    # this shape; a numbered street missed there would be lost.
    pieces = ["12 ", "4B ", "777", "10/2 ", "Oak ", "Main ", "Brockton ", "of ", "the ", "Street", "St", "Ave",
              "Avenues", "Street-level ", "Rd.", ", Apt 4", ", Lynn MA 01905", "\n", "\n\n", " ", "\t", "'s ",
              "O'Neil ", "São ", "x", "5", ",", "."]  # fmt: skip
    rng = random.Random(23)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(6000)]
    recognizer = pii_recognizers.StreetAddressRecognizer
    numbered = pii_recognizers._SHAPE_NUMBERED
    batch = pii_recognizers.Batch(texts)
    words = batch.words
    street_types: dict[int, list[int]] = {}
    for i in range(words.n):
        if pii_recognizers._ANCHOR_KINDS[words.words[i]] & pii_recognizers._ANCHOR_STREET_TYPE:
            doc = int(batch.doc_of(int(words.start[i])))
            street_types.setdefault(doc, []).append(int(words.start[i]) - int(batch.starts[doc]))
    found = 0
    for doc, text in enumerate(texts):
        whole = recognizer.spans(text, numbered)
        assert recognizer.spans(text, numbered, street_types.get(doc, [])) == whole, text
        found += len(whole)
    assert found > 400
