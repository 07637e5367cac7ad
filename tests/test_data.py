"LAION-style filtering (hand-computed funnel, streaming with bounded memory), aspect buckets, caption folders."
import csv, json, tracemalloc
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from sd_from_scratch.data import (BucketBatchSampler, CaptionImageFolder, Funnel, MinSide, RowFilter, SD_STAGES, assign_buckets,
                                  bucket_dataloader, chunked, collate_captions, filter_rows, filter_table, iter_rows, iter_table,
                                  make_buckets, make_laion_sample, resize_to_bucket, sd_filters)

HAND = [  # url, width, height, similarity, pwatermark, punsafe, aesthetic
    ("a", 640, 512, 0.31, 0.10, 0.01, 5.6),    # passes everything
    ("b", 640, 640, 0.20, 0.10, 0.01, 6.0),    # CLIP similarity too low
    ("c", 1024, 300, 0.33, 0.10, 0.01, 6.0),   # short side 300
    ("d", 800, 600, 0.30, 0.50, 0.01, 6.0),    # pwatermark exactly 0.5 → out
    ("e", 800, 600, 0.30, 0.20, 0.40, 6.0),    # unsafe
    ("f", 800, 600, 0.30, 0.20, 0.01, 5.0),    # aesthetic exactly 5.0 → out (> 5.0)
    ("g", 512, 512, 0.28, 0.49, 0.09, 5.01),   # on every threshold, right side
    ("h", 900, 900, 0.35, 0.00, 0.00, None),   # missing aesthetic → out
    ("i", 300, 700, 0.29, 0.05, 0.02, 7.0),    # 256 stage only
]
COLS = ("url", "width", "height", "similarity", "pwatermark", "punsafe", "aesthetic")

def write_hand_table(path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f); w.writerow([*COLS, "caption"])
        for r in HAND: w.writerow([*("" if v is None else v for v in r), f"caption {r[0]}"])
    return path

def test_hand_table_funnel_512(tmp_path):
    src = write_hand_table(tmp_path / "hand.csv")
    fu = filter_table(src, sd_filters(), dst=tmp_path / "kept.csv", chunk_size=2)
    # by hand: 9 rows; b fails similarity → 8; c, i fail min side 512 → 6; d → 5; f, h fail aesthetic → 3.
    # e (punsafe 0.40) stays: no SD v1 stage filtered on punsafe (that is SD 2.0's filter)
    assert list(fu.items()) == [("all rows", 9), ("similarity ≥ 0.28", 8), ("min side ≥ 512", 6), ("pwatermark < 0.5", 5),
                                ("aesthetic > 5.0", 3)]
    assert [r["url"] for r in iter_rows(tmp_path / "kept.csv")] == ["a", "e", "g"]
    assert fu == filter_table(src, sd_filters(**SD_STAGES["v1.2+ · 512² · improved_aesthetics_5plus"]))

def test_no_sd_v1_stage_filters_punsafe_sd2_does(tmp_path):
    "SD v1.x stages: CLIP similarity, size, watermark, aesthetics, never punsafe; SD 2.0: punsafe < 0.1, aesthetic ≥ 4.5."
    for stage, kw in SD_STAGES.items():
        cols = [f.column for f in sd_filters(**kw)]
        assert ("punsafe" in cols) == stage.startswith("2.0"), stage
    src = write_hand_table(tmp_path / "hand.csv")
    fu = filter_table(src, sd_filters(**SD_STAGES["2.0 · 512² · LAION-5B, punsafe < 0.1"]), dst=tmp_path / "kept.csv")
    # by hand: b → 8; c, i → 6; no watermark filter (d stays); e unsafe → 5; h has no score (f's 5.0 ≥ 4.5 passes) → 4
    assert list(fu.items()) == [("all rows", 9), ("similarity ≥ 0.28", 8), ("min side ≥ 512", 6), ("punsafe < 0.1", 5),
                                ("aesthetic ≥ 4.5", 4)]
    assert [r["url"] for r in iter_rows(tmp_path / "kept.csv")] == ["a", "d", "f", "g"]
    with pytest.raises(ValueError, match="aesthetic_op"): sd_filters(aesthetic_op="<")

def test_hand_table_funnel_256_stage(tmp_path):
    src = write_hand_table(tmp_path / "hand.csv")
    fu = filter_table(src, sd_filters(**SD_STAGES["v1.1 · 256² · laion2B-en"]), dst=tmp_path / "kept.csv")
    # by hand: b fails similarity → 8; every other short side is ≥ 256 (c and i have 300) → 8
    assert list(fu.items()) == [("all rows", 9), ("similarity ≥ 0.28", 8), ("min side ≥ 256", 8)]
    assert [r["url"] for r in iter_rows(tmp_path / "kept.csv")] == list("acdefghi")

def test_filters_skip_and_types(tmp_path):
    assert [f.name for f in sd_filters(max_unsafe=None, min_side=None)] == ["similarity ≥ 0.28", "pwatermark < 0.5", "aesthetic > 5.0"]
    rows = list(iter_rows(write_hand_table(tmp_path / "t.csv")))
    assert isinstance(rows[0]["width"], int) and isinstance(rows[0]["aesthetic"], float) and rows[7]["aesthetic"] is None
    assert MinSide(512)(dict(width=512, height=512)) and not MinSide(512)(dict(width=511, height=4000))
    assert not RowFilter("x", "aesthetic", ">", 5)(dict(aesthetic=None))
    with pytest.raises(ValueError, match="unknown op"):
        RowFilter("x", "aesthetic", "!=", 5)(dict(aesthetic=1.0))

def test_laion_column_names_and_jsonl(tmp_path):
    p = tmp_path / "laion.jsonl"
    p.write_text(json.dumps(dict(URL="u", TEXT="a cat", WIDTH=600, HEIGHT=700, similarity=0.3, pwatermark=0.1, punsafe=0.0,
                                 AESTHETIC_SCORE=6.2)) + "\n")
    (row,) = iter_rows(p)
    assert row["caption"] == "a cat" and row["width"] == 600 and row["aesthetic"] == 6.2
    assert list(filter_rows([row], sd_filters()))
    with pytest.raises(ValueError, match="unknown table format"):
        list(iter_rows(tmp_path / "x.tsv"))

def test_chunked():
    assert [len(c) for c in chunked(range(10), 4)] == [4, 4, 2]
    assert list(chunked([], 3)) == []

def test_streaming_large_table_bounded_memory(tmp_path):
    n = 60_000
    big = make_laion_sample(tmp_path / "big.csv", n=n, seed=3, chunk_size=20_000)
    assert sum(1 for _ in open(big)) == n + 1
    sizes = [len(c) for c in iter_table(big, chunk_size=5_000)]
    assert sum(sizes) == n and max(sizes) == 5_000
    tracemalloc.start()
    fu = filter_table(big, chunk_size=2_000, dst=tmp_path / "kept.csv")
    peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    assert fu["all rows"] == n and 0 < list(fu.values())[-1] < 0.1 * n
    # a whole-table load of 60,000 row dicts takes ~30 MiB; a streamed pass holds one chunk
    assert peak < 8 * 2 ** 20, f"peak traced memory {peak / 2**20:.1f} MiB: the table is not being streamed"
    # realistic distribution: about 21 % of rows have both sides ≥ 512, 57 % ≥ 256
    rows = [r for c in iter_table(big, 20_000) for r in c][:20_000]
    f512 = np.mean([min(r["width"], r["height"]) >= 512 for r in rows])
    f256 = np.mean([min(r["width"], r["height"]) >= 256 for r in rows])
    assert 0.17 < f512 < 0.25 and 0.52 < f256 < 0.62

def test_buckets_shape():
    b = make_buckets()
    assert b == [(384, 640), (448, 576), (512, 512), (576, 448), (640, 384)]
    for mr in (2.0, 4.0):
        for w, h in make_buckets(max_ratio=mr):
            assert w % 64 == 0 and h % 64 == 0 and w * h <= 512 ** 2 and max(w / h, h / w) <= mr
    assert list(assign_buckets([(1000, 1000), (1920, 1080), (1080, 1920), (10, 3000)], b)) == [2, 4, 0, 0]
    with pytest.raises(ValueError, match="positive"):
        assign_buckets([(0, 10)], b)

@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), min_size=1, max_size=300),
       batch_size=st.integers(1, 17), drop_last=st.booleans(), shuffle=st.booleans(), seed=st.integers(0, 2 ** 16),
       max_ratio=st.sampled_from([2.0, 4.0]))
def test_bucket_batches_never_mix_sizes(sizes, batch_size, drop_last, shuffle, seed, max_ratio):
    buckets = make_buckets(max_ratio=max_ratio)
    ids = assign_buckets(sizes, buckets)
    # the assigned bucket is the closest in log aspect ratio
    lr = np.log([w / h for w, h in sizes]); br = np.log([w / h for w, h in buckets])
    assert np.allclose(np.abs(lr - br[ids]), np.abs(lr[:, None] - br[None]).min(1))
    s = BucketBatchSampler(ids, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    batches = list(s)
    assert len(batches) == len(s)
    for bt in batches:
        assert len({buckets[ids[i]] for i in bt}) == 1
        assert 1 <= len(bt) <= batch_size and (not drop_last or len(bt) == batch_size)
    seen = sorted(i for bt in batches for i in bt)
    assert len(seen) == len(set(seen))
    if not drop_last: assert seen == list(range(len(sizes)))
    else:
        counts = np.bincount(ids)
        assert len(seen) == int(sum(c // batch_size * batch_size for c in counts))

def test_sampler_epochs_are_deterministic():
    ids = np.arange(100) % 3
    s = BucketBatchSampler(ids, 4, seed=1)
    e0 = list(s); assert e0 == list(s)
    s.set_epoch(1); assert list(s) != e0
    assert list(BucketBatchSampler(ids, 4, shuffle=False)) [0] == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(ids, 0)

def make_folder(root, sizes, layout="txt"):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    meta = []
    for i, (w, h) in enumerate(sizes):
        name = f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        if layout == "txt": (root / f"img{i:02d}.txt").write_text(f"caption {i}\n")
        else: meta.append({"file_name": name, "text": f"caption {i}"})
    if layout == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    elif layout == "csv":
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["file_name", "text"]); w.writeheader(); w.writerows(meta)
    return root

SIZES = [(100, 60), (60, 100), (80, 80), (120, 50), (70, 90), (50, 50), (90, 40)]

@pytest.mark.parametrize("layout", ["txt", "jsonl", "csv"])
def test_caption_folder_dataset(tmp_path, layout):
    root = make_folder(tmp_path / layout, SIZES, layout)
    buckets = make_buckets(base=64, step=16, max_ratio=2.0)
    ds = CaptionImageFolder(root, buckets=buckets)
    assert len(ds) == len(SIZES) and ds.captions == [f"caption {i}" for i in range(len(SIZES))]
    assert ds.sizes == SIZES
    for i in range(len(ds)):
        it = ds[i]
        w, h = buckets[ds.bucket_ids[i]]
        assert it["pixel_values"].shape == (3, h, w) and it["pixel_values"].dtype == torch.float32
        assert -1 <= it["pixel_values"].min() and it["pixel_values"].max() <= 1
    seen = 0
    for batch in bucket_dataloader(ds, batch_size=2, seed=0):
        assert batch["pixel_values"].ndim == 4 and len(batch["caption"]) == batch["pixel_values"].shape[0]
        seen += len(batch["caption"])
    assert seen == len(ds)

def test_caption_folder_square_and_errors(tmp_path):
    root = make_folder(tmp_path / "sq", SIZES[:3])
    ds = CaptionImageFolder(root, size=64)
    assert ds[0]["pixel_values"].shape == (3, 64, 64)
    (root / "img01.txt").unlink()
    with pytest.raises(ValueError, match="no caption"):
        CaptionImageFolder(root, size=64)
    with pytest.raises(FileNotFoundError, match="no images"):
        CaptionImageFolder((tmp_path / "empty").mkdir() or tmp_path / "empty")
    with pytest.raises(ValueError, match="mixes image sizes"):
        collate_captions([{"pixel_values": torch.zeros(3, 8, 8), "caption": "a"}, {"pixel_values": torch.zeros(3, 8, 16), "caption": "b"}])

def test_resize_to_bucket_covers_and_crops():
    img = Image.new("RGB", (300, 100), "red")
    for crop in ("center", "random"):
        out = resize_to_bucket(img, (64, 128), crop=crop, rng=np.random.default_rng(0))
        assert out.size == (64, 128)
    with pytest.raises(ValueError, match="crop"):
        resize_to_bucket(img, (64, 64), crop="smart")
