"""Each source format loads into the canonical schema; errors still name file and row."""

import gzip
import json

import pandas as pd
import pytest

from crossrec import schema
from crossrec.config import DataConfig
from crossrec.data.loaders import load_dataset, parse_amazon_flag
from crossrec.errors import DataError

from conftest import GOOD_INTERACTIONS, GOOD_ITEMS


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".tsv", ".jsonl"])
def test_generic_table_formats_load_the_same(tmp_path, suffix):
    inter = pd.read_csv(pd.io.common.StringIO(GOOD_INTERACTIONS))
    items = pd.read_csv(pd.io.common.StringIO(GOOD_ITEMS))
    paths = []
    for name, frame in [("interactions", inter), ("items", items)]:
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".parquet":
            frame.to_parquet(path)
        elif suffix == ".tsv":
            frame.to_csv(path, sep="\t", index=False)
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_csv(path, index=False)
        paths.append(path)
    data = load_dataset(DataConfig(interactions=str(paths[0]), items=str(paths[1])))
    assert data.interactions[schema.USER_ID].tolist() == ["u1", "u1", "u2"]
    assert data.interactions[schema.ITEM_ID].tolist() == ["b1", "m1", "b1"]
    assert data.interactions[schema.TIMESTAMP].tolist() == [1700000000, 1700000100, 1704067200]


def test_parquet_errors_name_the_row(tmp_path):
    frame = pd.DataFrame({"user_id": ["u1", None], "item_id": ["b1", "b1"], "domain": ["books", "books"],
                          "seq_pos": [0, 1]})
    frame.to_parquet(tmp_path / "i.parquet")
    pd.read_csv(pd.io.common.StringIO(GOOD_ITEMS)).to_parquet(tmp_path / "items.parquet")
    with pytest.raises(DataError, match=r"i.parquet, row 2, column 'user_id': user_id is empty"):
        load_dataset(DataConfig(interactions=str(tmp_path / "i.parquet"), items=str(tmp_path / "items.parquet")))


def test_a_folder_with_interactions_and_items(tmp_path, tiny_dataset):
    tiny_dataset.save(tmp_path / "d")
    data = load_dataset(DataConfig(interactions=str(tmp_path / "d")))
    assert len(data.interactions) == len(tiny_dataset.interactions)


def test_unreadable_file_names_the_file(write):
    path = write("i.parquet", "this is not parquet")
    with pytest.raises(DataError, match=r"i.parquet: cannot read interactions file"):
        load_dataset(DataConfig(interactions=str(path), items=str(path)))


# --- MovieLens -------------------------------------------------------------------------------------

def _ml100k(root):
    root.mkdir()
    (root / "u.data").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n")
    flags = ["0"] * 19
    drama, comedy = flags.copy(), flags.copy()
    drama[8] = "1"
    comedy[5] = comedy[14] = "1"
    (root / "u.item").write_bytes(
        ("10|Caf\xe9 au Lait (1993)|01-Jan-1993||http://x|" + "|".join(drama) + "\n"
         "20|Toy Story (1995)|01-Jan-1995||http://y|" + "|".join(comedy) + "\n").encode("latin-1"))


def test_movielens_100k(tmp_path):
    _ml100k(tmp_path / "ml")
    data = load_dataset(DataConfig(interactions=str(tmp_path / "ml"), format="movielens"))
    assert len(data.interactions) == 3 and data.domains == ["movies"]
    texts = data.items.set_index(schema.ITEM_ID)[schema.TEXT]
    assert texts["10"] == "Café au Lait (1993). Drama"
    assert texts["20"] == "Toy Story (1995). Comedy, Romance"
    assert data.interactions[schema.RATING].tolist() == [5.0, 3.0, 4.0]


def test_movielens_genres_as_domains(tmp_path):
    _ml100k(tmp_path / "ml")
    data = load_dataset(DataConfig(interactions=str(tmp_path / "ml"), format="movielens",
                                   movielens_domain="genre"))
    assert data.domains == ["comedy", "drama"]
    assert dict(zip(data.interactions[schema.ITEM_ID], data.interactions[schema.DOMAIN], strict=True)) == \
        {"10": "drama", "20": "comedy"}


def test_movielens_1m(tmp_path):
    root = tmp_path / "ml1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1193::5::978300760\n2::1193::3::978300761\n")
    (root / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n".encode("latin-1"))
    data = load_dataset(DataConfig(interactions=str(root), format="movielens"))
    assert data.items[schema.TEXT].tolist() == ["One Flew Over the Cuckoo's Nest (1975). Drama"]
    assert data.interactions[schema.TIMESTAMP].tolist() == [978300760, 978300761]


def test_movielens_latest(tmp_path):
    root = tmp_path / "mll"
    root.mkdir()
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    (root / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                     '3,"Grumpier Old Men (1995)",(no genres listed)\n')
    data = load_dataset(DataConfig(interactions=str(root), format="movielens"))
    texts = data.items.set_index(schema.ITEM_ID)[schema.TEXT]
    assert texts["1"] == "Toy Story (1995). Adventure, Animation"
    assert texts["3"] == "Grumpier Old Men (1995)"
    assert data.interactions[schema.RATING].tolist() == [4.0, 4.5]


def test_not_a_movielens_folder(tmp_path):
    with pytest.raises(DataError, match="not a MovieLens directory"):
        load_dataset(DataConfig(interactions=str(tmp_path), format="movielens"))


# --- Amazon ------------------------------------------------------------------------------------------

def _jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def test_amazon_2018_and_2023_files_become_two_domains(tmp_path):
    books = {
        "reviews": _jsonl(tmp_path / "Books.json.gz", [
            {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000},
            {"reviewerID": "A2", "asin": "B01", "overall": 3.0, "unixReviewTime": 1400000100}], gz=True),
        "meta": _jsonl(tmp_path / "meta_Books.json.gz", [
            {"asin": "B01", "title": "The Last Nebula", "category": ["Books", "Science Fiction"],
             "brand": "Orbit", "description": ["A space novel."]}], gz=True),
    }
    office = {
        "reviews": _jsonl(tmp_path / "Office.jsonl", [
            {"user_id": "A1", "asin": "X9", "parent_asin": "P1", "rating": 4.0, "timestamp": 1600000000123}]),
        "meta": _jsonl(tmp_path / "meta_Office.jsonl", [
            {"parent_asin": "P1", "title": "Rocket Stapler", "main_category": "Office Products",
             "categories": ["Office Products", "Staplers"], "store": "Acme", "description": []}]),
    }
    data = load_dataset(DataConfig(format="amazon", amazon_files={"books": books, "office": office}))
    assert data.domains == ["books", "office"]
    inter = data.interactions.set_index(schema.DOMAIN)
    assert inter.loc["office", schema.ITEM_ID] == "P1"
    assert inter.loc["office", schema.TIMESTAMP] == 1600000000  # 2023 milliseconds -> seconds
    texts = data.items.set_index(schema.ITEM_ID)[schema.TEXT]
    assert texts["B01"] == "The Last Nebula. Books > Science Fiction"
    assert texts["P1"] == "Rocket Stapler. Office Products > Staplers"


def test_amazon_error_names_the_jsonl_line(tmp_path):
    reviews = _jsonl(tmp_path / "r.jsonl", [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A2", "asin": "B02", "overall": "great", "unixReviewTime": 1400000100}])
    meta = _jsonl(tmp_path / "m.jsonl", [{"asin": "B01", "title": "T1"}, {"asin": "B02", "title": "T2"}])
    with pytest.raises(DataError, match=r"r.jsonl, row 2 \(line 2\), column 'rating': rating 'great' is not a number"):
        load_dataset(DataConfig(format="amazon", amazon_files={"books": {"reviews": reviews, "meta": meta}}))


def test_amazon_flag_parsing():
    assert parse_amazon_flag(["books=r.jsonl,m.jsonl"]) == {"books": {"reviews": "r.jsonl", "meta": "m.jsonl"}}
    with pytest.raises(DataError, match="is not DOMAIN=REVIEWS,META"):
        parse_amazon_flag(["books=r.jsonl"])


# --- Streaming: large files are read and checked in chunks ----------------------------------------

def _interactions_file(tmp_path, suffix: str, n: int, bad_rows=()):
    rows = [{"user_id": f"u{i % 7}", "item_id": "b1" if i % 2 else "m1", "domain": "books" if i % 2 else "movies",
             "timestamp": "whenever" if i + 1 in bad_rows else str(1700000000 + i)} for i in range(n)]
    frame = pd.DataFrame(rows)
    path = tmp_path / f"interactions{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path, row_group_size=3)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_table_read_in_chunks_validates_as_when_read_whole(tmp_path, suffix):
    from crossrec.data import io
    from crossrec.data.validate import validate

    path = _interactions_file(tmp_path, suffix, 23)
    items = io.read_table(_write_items(tmp_path), what="items")
    whole = validate(io.read_table(path, what="interactions"), items, text_template="{title}")[0]
    chunks = io.TableChunks(path, what="interactions", chunk_rows=4)
    streamed = validate(chunks, items, text_template="{title}")[0]
    pd.testing.assert_frame_equal(streamed, whole)
    assert streamed[schema.SOURCE_ROW].tolist() == list(range(1, 24))
    with pytest.raises(RuntimeError, match="iterated once"):
        next(iter(chunks))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_errors_in_later_chunks_name_their_rows_and_rules_are_capped_across_chunks(tmp_path, suffix):
    from crossrec.data import io
    from crossrec.data.validate import validate

    path = _interactions_file(tmp_path, suffix, 30, bad_rows=(3, 9, 14, 20, 21, 22, 29))
    items = io.read_table(_write_items(tmp_path), what="items")
    with pytest.raises(DataError) as info:
        validate(io.TableChunks(path, what="interactions", chunk_rows=4), items, text_template="{title}")
    messages = [str(p) for p in info.value.problems]
    assert len(messages) == 6, messages
    line = " (line {})" if suffix == ".csv" else ""
    for message, row in zip(messages, (3, 9, 14, 20, 21), strict=False):
        assert f"interactions{suffix}, row {row}{line.format(row + 1)}, column 'timestamp': " \
               "timestamp 'whenever' is not a time" in message
    assert messages[-1].startswith(f"{path}, column 'timestamp': ... and 2 more rows with the same problem")


def test_load_dataset_streams_the_interactions_file(tmp_path, monkeypatch):
    from crossrec.data import io

    monkeypatch.setitem(io.TableChunks.__init__.__kwdefaults__, "chunk_rows", 5)
    seen = []
    original = io.TableChunks._numbered

    def numbered(self, chunk_rows, csv_options):
        for frame in original(self, chunk_rows, csv_options):
            seen.append(len(frame))
            yield frame

    monkeypatch.setattr(io.TableChunks, "_numbered", numbered)
    path = _interactions_file(tmp_path, ".csv", 12)
    data = load_dataset(DataConfig(interactions=str(path), items=str(_write_items(tmp_path))))
    assert len(data.interactions) == 12
    assert max(seen) <= 5 and sum(seen) == 12 + 2  # the interactions in chunks, the 2 items whole


def _write_items(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(GOOD_ITEMS)
    return path


def test_a_data_folder_that_does_not_exist_says_not_found(tmp_path):
    with pytest.raises(DataError, match=r"data: not found: no such file or folder") as error:
        load_dataset(DataConfig(interactions=str(tmp_path / "data")))
    assert "no items table" not in str(error.value)
