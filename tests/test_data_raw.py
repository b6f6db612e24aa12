"""Raw public formats -> Dataset: the shared sequence preprocessing (rere.data.sequences) and
the Amazon, Yelp and MovieLens loaders, on small files the tests write themselves."""
from __future__ import annotations

import argparse
import gzip
import json

import pytest

from rere.data import Dataset, Example
from rere.data import amazon_raw, movielens, yelp
from rere.data.amazon_raw import category_from_file_name, clean_title, load_amazon
from rere.data.movielens import find_layout, load_movielens
from rere.data.sequences import Interactions, Sequencing, build_dataset, parse_time
from rere.data.yelp import load_yelp

KCORE = "user or item with fewer than {} interactions (k-core)"


def build(rows, sequencing=Sequencing(min_count=1)) -> Dataset:
    """The dataset of (user, item, timestamp) rows, each item titled "Title <id>"."""
    interactions = Interactions()
    for user, item, timestamp in rows:
        interactions.add(user, item, timestamp)
    titles = {item: f"Title {item}" for _, item, _ in rows}
    return build_dataset(interactions, titles, sequencing, source="hand", category="thing", options={}, skipped={})


def examples(dataset: Dataset) -> list[tuple]:
    """Every example as (user, history, target, timestamp), splits in order."""
    return [(e.user, e.history, e.target, e.timestamp) for name in ("train", "valid", "test")
            for e in dataset.splits[name]]


# -- the shared preprocessing -------------------------------------------------------------

def test_k_core_repeats_until_stable():
    # Round 1 drops item c (one interaction); that leaves u3 with one, so round 2 drops
    # u3; that leaves item a with one, so round 3 drops it; then u1 and u2 each have b, d.
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "d", 3), ("u2", "b", 4), ("u2", "d", 5),
            ("u3", "a", 6), ("u3", "c", 7)]
    dataset = build(rows, Sequencing(min_count=2))
    assert dataset.catalog.ids == ("b", "d")
    assert examples(dataset) == [("u1", ("b",), "d", 3), ("u2", ("b",), "d", 5)]
    assert dataset.skipped == {KCORE.format(2): 3}
    assert examples(build(rows, Sequencing(min_count=1)))[0] == ("u1", ("a",), "b", 2)


def test_histories_hold_the_last_items_oldest_first():
    rows = [("u", item, t) for t, item in enumerate("abcdef", start=1)]
    dataset = build(rows, Sequencing(min_count=1, max_history=3, split=(1, 0, 0)))
    assert examples(dataset) == [("u", ("a",), "b", 2), ("u", ("a", "b"), "c", 3), ("u", ("a", "b", "c"), "d", 4),
                                 ("u", ("b", "c", "d"), "e", 5), ("u", ("c", "d", "e"), "f", 6)]
    assert dataset.splits["train"][-1].history_timestamps == (3, 4, 5)


def test_default_history_is_ten_items():
    rows = [("u", f"i{t:02d}", t) for t in range(13)]
    last = build(rows).splits["test"][-1]
    assert last.history == tuple(f"i{t:02d}" for t in range(2, 12)) and last.target == "i12"


def test_equal_timestamps_keep_file_order_within_a_user():
    rows = [("u", "c", 5), ("u", "a", 5), ("u", "b", 5), ("u", "z", 1)]
    assert examples(build(rows, Sequencing(min_count=1, split=(1, 0, 0)))) == [
        ("u", ("z",), "c", 5), ("u", ("z", "c"), "a", 5), ("u", ("z", "c", "a"), "b", 5)]


def test_split_is_global_by_time_with_ties_in_order_of_first_appearance():
    # Ten users, one example each; "ub" appears in the file before "ua", and both targets
    # are at t=8, where the 80% cut falls: "ub" goes to train, "ua" to valid.
    targets = {"u0": 1, "u1": 2, "u2": 3, "u3": 4, "u4": 5, "u5": 6, "u6": 7, "ub": 8, "ua": 8, "u9": 9}
    rows = [(user, "start", 0) for user in targets] + [(user, f"x{user}", t) for user, t in reversed(targets.items())]
    dataset = build(rows)
    assert [e.user for e in dataset.splits["train"]] == ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "ub"]
    assert [e.user for e in dataset.splits["valid"]] == ["ua"]
    assert [e.user for e in dataset.splits["test"]] == ["u9"]
    halves = build(rows, Sequencing(min_count=1, split=(0.7, 0.2, 0.1)))  # 0.7 + 0.2 < 0.9 in floats
    assert [len(halves.splits[name]) for name in ("train", "valid", "test")] == [7, 2, 1]


def test_time_window_applies_before_the_k_core():
    # u2's second interaction is after the window, so u2 falls below 2 and takes item b's
    # count with it; with the window applied after the k-core, u2 and b would stay.
    rows = [("u1", "a", 10), ("u1", "b", 20), ("u1", "c", 30), ("u2", "b", 20), ("u2", "c", 41),
            ("u3", "a", 15), ("u3", "c", 25), ("u1", "a", 5)]
    dataset = build(rows, Sequencing(min_count=2, start=10, end=40))
    assert examples(dataset) == [("u3", ("a",), "c", 25), ("u1", ("a",), "c", 30)]
    assert dataset.skipped == {"outside the time window": 2, KCORE.format(2): 2}
    assert dataset.options["start"] == 10 and dataset.options["end"] == 40


def test_parse_time():
    assert parse_time("2018-10") == parse_time("2018-10-01") == 1538352000
    assert parse_time("2018") == 1514764800
    assert parse_time("1538352000") == parse_time(1538352000) == 1538352000
    assert parse_time("2018-10-01T02:00:00+02:00") == 1538352000
    with pytest.raises(ValueError, match="not a time"):
        parse_time("last week")


@pytest.mark.parametrize("options, message", [
    ({"split": (0.8, 0.1)}, "split must be 3"), ({"split": (0.8, 0.3, -0.1)}, "split must be 3"),
    ({"min_count": 0}, "min_count"), ({"max_history": 0}, "max_history"),
    ({"start": "2019", "end": "2018"}, "starts"),
])
def test_bad_sequencing_options(options, message):
    with pytest.raises(ValueError, match=message):
        Sequencing(**options)


def test_nothing_left_is_a_clear_error():
    with pytest.raises(ValueError, match="no interactions left out of 2 read"):
        build([("u", "a", 1), ("u", "b", 2)], Sequencing(min_count=3))


# -- Amazon ---------------------------------------------------------------------------------

TWENTY_WORDS = " ".join(f"w{i}" for i in range(20))
META = [
    '{"asin": "A1", "title": "Hydrofarm &quot;Pro&quot; Pruner &amp; Snips", "price": "$5"}',
    "{'asin': 'A2', 'title': '  \"Quoted Gloves\" ', 'also_buy': []}",  # a Python-literal row
    json.dumps({"asin": "A3", "title": TWENTY_WORDS}),
    json.dumps({"asin": "A4", "title": TWENTY_WORDS + " w20"}),
    json.dumps({"asin": "A5", "title": '<span id="x">var a = 1;</span>'}),
    json.dumps({"asin": "A6", "brand": "no title"}),
    json.dumps({"asin": "A7", "title": " x "}),
    json.dumps({"asin": "A8", "title": "Tape 3<5 mm"}),
    json.dumps({"asin": "A9", "title": "Line<br>Two"}),
]
REVIEWS = [  # (user, asin, time); A4, A5 and AX (no metadata) are dropped for want of a title
    ("r1", "A1", 100), ("r1", "A4", 150), ("r1", "A2", 200), ("r2", "A3", 120), ("r2", "A1", 300),
    ("r2", "A5", 310), ("r1", "A8", 400), ("r2", "AX", 500),
]


def write_lines(path, lines, compress=False):
    text = "".join(line + "\n" for line in lines)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_amazon(folder, reviews=REVIEWS, meta=META, compress=False):
    suffix = ".json.gz" if compress else ".json"
    review_lines = [json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 5.0, "reviewText": "ok"})
                    for u, a, t in reviews]
    return (write_lines(folder / f"Industrial_and_Scientific_5{suffix}", review_lines, compress),
            write_lines(folder / f"meta_Industrial_and_Scientific{suffix}", meta, compress))


def test_amazon_titles_are_cleaned_and_filtered_as_d3_does(tmp_path):
    dataset = load_amazon(*write_amazon(tmp_path), min_count=1, split=(0.5, 0.25, 0.25))
    assert dataset.catalog.ids == ("A1", "A2", "A3", "A8")
    assert dict(zip(dataset.catalog.ids, dataset.catalog.identifiers)) == {
        "A1": 'Hydrofarm "Pro" Pruner & Snips', "A3": TWENTY_WORDS, "A2": "Quoted Gloves", "A8": "Tape 3<5 mm"}
    assert examples(dataset) == [("r1", ("A1",), "A2", 200), ("r2", ("A3",), "A1", 300),
                                 ("r1", ("A1", "A2"), "A8", 400)]
    assert [len(dataset.splits[name]) for name in ("train", "valid", "test")] == [1, 1, 1]
    assert dataset.skipped == {"item title over 20 words": 1, "item title with HTML": 2,
                               "item title missing or shorter than 2 characters": 2,
                               "review of an item without a valid title": 3}
    assert dataset.category == "industrial and scientific product"
    assert dataset.source.startswith("amazon:")


@pytest.mark.parametrize("raw, title, problem", [
    ("&quot;A&amp;B&quot;", "A&B", None), ("  ", "", "item title missing or shorter than 2 characters"),
    (None, "", "item title missing or shorter than 2 characters"), ("a</div>", "a</div>", "item title with HTML"),
    ("x  " + TWENTY_WORDS[:-4], "x  " + TWENTY_WORDS[:-4], "item title over 20 words"),  # D3 splits on " "
])
def test_amazon_title_rules(raw, title, problem):
    assert clean_title(raw) == (title, problem)


def test_amazon_reads_gzip_and_takes_category_overrides(tmp_path):
    plain = load_amazon(*write_amazon(tmp_path), min_count=1)
    gz = load_amazon(*write_amazon(tmp_path, compress=True), min_count=1, category="tool")
    assert gz.splits == plain.splits and gz.catalog == plain.catalog and gz.category == "tool"
    assert category_from_file_name("reviews_Clothing_Shoes_and_Jewelry_5.json.gz") == \
        "clothing shoes and jewelry product"
    assert category_from_file_name("notes.txt") == "product"


def test_amazon_default_five_core(tmp_path):
    reviews = [(f"u{u}", f"A{i}", 10 * u + i) for u in range(5) for i in range(5)] + [("u9", "A0", 999)]
    meta = [json.dumps({"asin": f"A{i}", "title": f"Item {i}"}) for i in range(5)]
    dataset = load_amazon(*write_amazon(tmp_path, reviews, meta))
    assert len(dataset.catalog) == 5 and sum(map(len, dataset.splits.values())) == 20
    assert dataset.skipped == {KCORE.format(5): 1}
    assert dataset.options["min_count"] == 5 and dataset.options["max_history"] == 10


@pytest.mark.parametrize("which, line, message", [
    ("reviews", "not json", "bad JSON"),
    ("reviews", '{"reviewerID": "r9", "unixReviewTime": 5}', "missing field: 'asin'"),
    ("reviews", '{"reviewerID": "r9", "asin": "A1", "unixReviewTime": "soon"}', "bad timestamp"),
    ("meta", "[1, 2]", "bad JSON: expected an object"),
    ("meta", json.dumps({"asin": "A1", "title": "Another title"}), "duplicate item"),
])
def test_amazon_bad_rows_name_file_and_line(tmp_path, which, line, message):
    reviews, meta = write_amazon(tmp_path)
    path = reviews if which == "reviews" else meta
    lines = path.read_text().splitlines()
    write_lines(path, lines[:2] + [line] + lines[2:])
    with pytest.raises(ValueError, match=rf"{path.name}:3: {message}.*--skip-bad"):
        load_amazon(reviews, meta, min_count=1)
    reason = message.split(":")[0]
    assert load_amazon(reviews, meta, min_count=1, skip_bad=True).skipped[reason] == 1


def test_amazon_missing_files(tmp_path):
    reviews, meta = write_amazon(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json: no such file .expected an Amazon metadata file"):
        load_amazon(reviews, tmp_path / "nope.json")


# -- Yelp -----------------------------------------------------------------------------------

BUSINESSES = [
    {"business_id": "b1", "name": "Mike's  Diner", "address": "1 Main St\nSuite 2", "city": "Tampa", "state": "FL"},
    {"business_id": "b2", "name": "Food Truck", "address": "", "city": "Reno", "state": "NV", "stars": 4.5},
    {"business_id": "b3", "name": "Nowhere", "address": None, "city": "", "state": ""},
]


def write_yelp(folder, reviews, businesses=BUSINESSES):
    review_lines = [json.dumps({"review_id": f"r{i}", "user_id": u, "business_id": b, "stars": 5, "date": d,
                                "text": "Great!\nReally."}) for i, (u, b, d) in enumerate(reviews)]
    return (write_lines(folder / "yelp_academic_dataset_review.json", review_lines),
            write_lines(folder / "yelp_academic_dataset_business.json", [json.dumps(b) for b in businesses]))


YELP_REVIEWS = [("x", "b1", "2018-01-01 10:00:00"), ("y", "b2", "2018-01-02 00:00:00"),
                ("x", "b2", "2018-01-01 09:00:00"), ("x", "b3", "2019-06-01 00:00:00"),
                ("y", "b1", "2017-12-31 23:59:59")]


def test_yelp_titles_dates_and_window(tmp_path):
    dataset = load_yelp(*write_yelp(tmp_path, YELP_REVIEWS), min_count=1, split=(0, 0, 1))
    assert dict(zip(dataset.catalog.ids, dataset.catalog.identifiers)) == {
        "b1": "Mike's Diner (1 Main St Suite 2, Tampa, FL)", "b2": "Food Truck (Reno, NV)", "b3": "Nowhere"}
    assert dataset.splits["test"] == [
        Example("x", ("b2",), "b1", (1514797200,), 1514800800), Example("y", ("b1",), "b2", (1514764799,), 1514851200),
        Example("x", ("b2", "b1"), "b3", (1514797200, 1514800800), 1559347200)]
    assert dataset.category == "business"
    windowed = load_yelp(*write_yelp(tmp_path, YELP_REVIEWS), min_count=1, start="2018-01-01", end="2018-12-31")
    assert [(e.user, e.history, e.target) for e in windowed.splits["test"]] == [("x", ("b2",), "b1")]
    assert windowed.catalog.ids == ("b1", "b2") and windowed.skipped == {"outside the time window": 2}


@pytest.mark.parametrize("review, message", [
    ({"user_id": "x", "business_id": "b9", "date": "2018-01-01 00:00:00"}, "unknown item: business 'b9'"),
    ({"user_id": "x", "business_id": "b1", "date": "yesterday"}, "bad timestamp"),
    ({"user_id": "x", "date": "2018-01-01 00:00:00"}, "missing field: 'business_id'"),
])
def test_yelp_bad_reviews(tmp_path, review, message):
    reviews, businesses = write_yelp(tmp_path, YELP_REVIEWS)
    write_lines(reviews, reviews.read_text().splitlines() + [json.dumps(review)])
    with pytest.raises(ValueError, match=f"review.json:6: {message}"):
        load_yelp(reviews, businesses, min_count=1)
    assert load_yelp(reviews, businesses, min_count=1, skip_bad=True).skipped[message.split(":")[0]] == 1


def test_yelp_business_without_a_name(tmp_path):
    reviews, businesses = write_yelp(tmp_path, YELP_REVIEWS, BUSINESSES + [{"business_id": "b4", "name": " "}])
    with pytest.raises(ValueError, match=r"business.json:4: empty title: item 'b4'"):
        load_yelp(reviews, businesses, min_count=1)


# -- MovieLens ------------------------------------------------------------------------------

MOVIES = [("1", "Toy Story", "1995"), ("2", "GoldenEye", "1995"), ("3", "Misérables, Les", "1995"),
          ("4", "Heat", "1995")]
RATINGS = [("1", "1", 5, 100), ("1", "3", 4, 100), ("1", "2", 3, 100), ("2", "2", 4, 50), ("2", "1", 2, 200),
           ("1", "4", 1, 300), ("2", "3", 5, 200)]
MOVIELENS_EXAMPLES = [("1", ("1",), "3", 100), ("1", ("1", "3"), "2", 100), ("2", ("2",), "1", 200),
                      ("2", ("2", "1"), "3", 200), ("1", ("1", "3", "2"), "4", 300)]
MOVIELENS_TITLES = ("Toy Story (1995)", "Misérables, Les (1995)", "GoldenEye (1995)", "Heat (1995)")


def write_grouplens_100k(folder, ratings=RATINGS):
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    (folder / "u.item").write_text("".join(f"{i}|{title} ({year})|01-Jan-{year}||http://x|" + "|".join("0" * 19) + "\n"
                                           for i, title, year in MOVIES), encoding="latin-1")
    return folder


def write_grouplens_1m(folder):
    folder.mkdir(exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    (folder / "movies.dat").write_text("".join(f"{i}::{title} ({year})::Comedy|Drama\n" for i, title, year in MOVIES),
                                       encoding="latin-1")
    return folder


def write_recbole(folder, items=None):
    folder.mkdir(exist_ok=True)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}.0\r\n" for u, i, r, t in RATINGS))
    items = items or [f"{i}\t{title}\t{year}\tComedy Drama" for i, title, year in MOVIES]
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{row}\n" for row in items),
        encoding="utf-8")
    return folder


@pytest.mark.parametrize("write, layout", [(write_grouplens_100k, "grouplens-100k"),
                                           (write_grouplens_1m, "grouplens-1m"), (write_recbole, "recbole")])
def test_movielens_layouts_give_the_same_dataset(tmp_path, write, layout):
    folder = write(tmp_path / "ml")
    assert find_layout(folder).name == layout
    dataset = load_movielens(folder, min_count=1, split=(0.6, 0.2, 0.2))
    assert dataset.catalog.ids == ("1", "3", "2", "4") and dataset.catalog.identifiers == MOVIELENS_TITLES
    assert examples(dataset) == MOVIELENS_EXAMPLES
    assert [len(dataset.splits[name]) for name in ("train", "valid", "test")] == [3, 1, 1]
    assert dataset.splits["test"][0].history_timestamps == (100, 100, 100)
    assert (dataset.category, dataset.options["layout"]) == ("movie", layout)


def test_recbole_titles_get_their_year_once(tmp_path):
    items = ["1\tToy Story\t1995\tx", "2\tGoldenEye (1995)\t1995\tx", "3\tMisérables, Les\tunkonwn\tx",
             "4\tHeat\t1995.0\tx", "4\tHeat\t1995\tx"]  # a repeated identical movie is the same movie
    dataset = load_movielens(write_recbole(tmp_path / "ml", items), min_count=1)
    assert dataset.catalog.identifiers == ("Toy Story (1995)", "Misérables, Les", "GoldenEye (1995)", "Heat (1995)")


def test_movielens_layout_detection_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_layout(tmp_path / "absent")
    (tmp_path / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(FileNotFoundError, match=r"no MovieLens files \(expected u.data \+ u.item .*found u.data\)"):
        find_layout(tmp_path)
    write_recbole(write_grouplens_100k(tmp_path / "both"))
    with pytest.raises(ValueError, match="several MovieLens datasets"):
        find_layout(tmp_path / "both")


@pytest.mark.parametrize("line, message", [
    ("1\t2\t3", "wrong field count: 3 fields, expected 4"), ("1\t2\t3\tnoon", "bad timestamp"),
    ("1\t9\t3\t400", "unknown item: movie '9' is not in u.item"),
])
def test_movielens_bad_ratings(tmp_path, line, message):
    folder = write_grouplens_100k(tmp_path / "ml")
    lines = (folder / "u.data").read_text().splitlines()
    (folder / "u.data").write_text("\n".join(lines[:3] + [line] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=f"u.data:4: {message}"):
        load_movielens(folder, min_count=1)
    dataset = load_movielens(folder, min_count=1, split=(0.6, 0.2, 0.2), skip_bad=True)
    assert dataset.skipped == {message.split(":")[0]: 1} and examples(dataset) == MOVIELENS_EXAMPLES


def test_movielens_bad_movies(tmp_path):
    folder = write_recbole(tmp_path / "ml", [f"{i}\t{t}\t{y}\tx" for i, t, y in MOVIES[:3]] + ["4\t \t1995\tx"])
    with pytest.raises(ValueError, match=r"ml-100k.item:5: empty title: item '4'"):
        load_movielens(folder, min_count=1)
    assert load_movielens(folder, min_count=1, skip_bad=True).skipped == {"empty title": 1, "unknown item": 1}
    (folder / "ml-100k.item").write_text("item_id:token\tclass:token_seq\n1\tx\n")
    with pytest.raises(ValueError, match=r"ml-100k.item:1: missing column\(s\) movie_title or title"):
        load_movielens(folder, min_count=1)


# -- saving, and the `rere prepare` protocol -----------------------------------------------

def test_loaded_dataset_survives_save_and_load(tmp_path):
    dataset = load_amazon(*write_amazon(tmp_path), min_count=1, start="1970-01-01")
    loaded = Dataset.load(dataset.save(tmp_path / "prepared"))
    assert (loaded.catalog, loaded.splits, loaded.category) == (dataset.catalog, dataset.splits, dataset.category)
    assert (loaded.options, loaded.skipped) == (dataset.options, dataset.skipped)


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true")  # added for every source by `rere prepare`
    return parser.parse_args(argv)


def test_prepare_protocol(tmp_path):
    reviews, meta = write_amazon(tmp_path)
    args = parse(amazon_raw, [str(reviews), str(meta), "--min-count", "1", "--max-history", "1",
                              "--start", "1970-01-01T00:02:00", "--split", "0", "0", "1"])
    dataset = amazon_raw.from_args(args)
    assert examples(dataset) == [("r2", ("A3",), "A1", 300), ("r1", ("A2",), "A8", 400)]
    assert dataset.options["split"] == {"train": 0.0, "valid": 0.0, "test": 1.0}

    yelp_args = parse(yelp, [*map(str, write_yelp(tmp_path, YELP_REVIEWS)), "--min-count", "1",
                             "--end", "2018-01-01T10:00:00"])  # the end is included
    assert [e.target for e in yelp.from_args(yelp_args).splits["test"]] == ["b1"]

    folder = write_grouplens_1m(tmp_path / "ml")
    movielens_dataset = movielens.from_args(parse(movielens, [str(folder), "--min-count", "1", "--category", "film"]))
    assert movielens_dataset.category == "film" and len(movielens_dataset.splits["train"]) == 4
    for module in (amazon_raw, yelp, movielens):
        assert module.NAME and module.HELP
