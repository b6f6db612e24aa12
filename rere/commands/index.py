"""`rere index build` and `rere index info`."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_SYNTHETIC_ITEMS = 1_000_000


def _build(args: argparse.Namespace) -> None:
    from rere.index import CatalogIndex

    start = time.perf_counter()
    if args.catalog is None:
        from rere.synthetic import title_like_catalog

        n = args.synthetic or DEFAULT_SYNTHETIC_ITEMS
        print(f"no catalog given: generating a synthetic title-like catalog of {n:,} items")
        tokens, offsets = title_like_catalog(n, seed=args.seed)
        made = time.perf_counter()
        index = CatalogIndex.from_flat(tokens, offsets, vocab_size=args.vocab_size or 151_936,
                                       metadata={"synthetic_items": n, "seed": args.seed})
        out = Path(args.out or f"synthetic-{n}.rtrie")
    else:
        from rere.catalog import Catalog
        from rere.tokenizers import load_tokenizer

        catalog = Catalog.load(args.catalog)
        tokenizer = load_tokenizer(args.tokenizer)
        print(f"catalog {args.catalog}: {len(catalog):,} items ({catalog.kind}s); tokenizer {args.tokenizer}")
        made = time.perf_counter()
        index = CatalogIndex.from_catalog(catalog, tokenizer, template=args.template, context=args.context,
                                          vocab_size=args.vocab_size, add_missing_tokens=args.add_missing_tokens)
        index.metadata["catalog_path"] = str(Path(args.catalog).resolve())
        out = Path(args.out or Path(args.catalog).with_suffix(".rtrie").name)
    built = time.perf_counter()
    index.save(out)
    print(f"built in {built - made:.2f} s (inputs ready in {made - start:.2f} s); wrote {out} "
          f"({out.stat().st_size / 1e6:.1f} MB)")


def _info(args: argparse.Namespace) -> None:
    from rere.index.index_file import load_trie, trie_stats  # not CatalogIndex: no torch needed here

    start = time.perf_counter()
    trie, metadata = load_trie(args.index)
    loaded = time.perf_counter() - start
    stats = trie_stats(trie)
    if args.json:
        print(json.dumps({"path": args.index, "load_seconds": loaded, **stats, "metadata": metadata}))
        return
    fanout = stats["max_fanout_per_depth"]
    rows = [
        ("items", f"{stats['items']:,}"),
        ("nodes", f"{stats['nodes']:,} ({stats['tail_tokens']:,} more tokens on compressed edges)"),
        ("size", f"{stats['bytes'] / 1e6:.1f} MB ({stats['bytes_per_item']:.1f} bytes/item)"),
        ("vocab size", f"{trie.vocab_size:,}"),
        ("max depth", f"{stats['max_depth']} tokens"),
        ("max fan-out by depth", " / ".join(f"{f:,}" for f in fanout[:8]) + (" ..." if len(fanout) > 8 else "")),
        ("loaded in", f"{loaded * 1e3:.1f} ms (memory-mapped)"),
    ]
    rows += [(f"metadata.{k}", json.dumps(v, ensure_ascii=False)) for k, v in metadata.items()]
    width = max(len(k) for k, _ in rows)
    print(args.index)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def register(commands) -> None:
    index = commands.add_parser("index", help="build and inspect catalog indexes")
    index_cmds = index.add_subparsers(dest="index_command", required=True)
    build = index_cmds.add_parser("build", help="build a catalog index and save it to one file")
    build.add_argument("catalog", nargs="?", help="title TSV (title<TAB>id) or semantic-ID JSON; "
                                                  "omitted: a synthetic title-like catalog")
    build.add_argument("-o", "--out", help="index file to write (default: next to the name of the catalog, .rtrie)")
    build.add_argument("--tokenizer", default="qwen2", help='"qwen2" (offline asset) or a local tokenizer directory')
    build.add_argument("--template", help='item completion template (default: \'"{title}"\\n\' for titles, '
                                          "'{title}\\n' for semantic IDs)")
    build.add_argument("--context", default="### Response:\n", help="prompt text the completion follows")
    build.add_argument("--vocab-size", type=int, help="model vocabulary size (default: the tokenizer's)")
    build.add_argument("--add-missing-tokens", action="store_true",
                       help="add semantic-ID tokens the tokenizer lacks (resize the model's embeddings to match)")
    build.add_argument("--synthetic", type=int, metavar="N", help=f"synthetic catalog size (default {DEFAULT_SYNTHETIC_ITEMS:,})")
    build.add_argument("--seed", type=int, default=0, help="synthetic catalog seed")
    build.set_defaults(func=_build)

    info = index_cmds.add_parser("info", help="print what an index file holds")
    info.add_argument("index", help="index file written by `rere index build`")
    info.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    info.set_defaults(func=_info)
