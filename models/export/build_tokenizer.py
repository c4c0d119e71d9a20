#!/usr/bin/env python3
"""Build ``tokenizer.json`` (Hugging Face ``tokenizers`` format) reproducing open_clip's CLIP tokenizer.

The daemon tokenises text with the Rust ``tokenizers`` crate, so it cannot call open_clip's
``SimpleTokenizer`` (Python, ftfy, ``regex``). This script translates that tokenizer into the
declarative ``tokenizer.json`` format:

* vocabulary and merges: read from ``bpe_simple_vocab_16e6.txt.gz`` shipped *inside* the installed
  ``open_clip_torch`` package (nothing is downloaded) and laid out exactly as
  ``SimpleTokenizer.__init__`` does, so every id is identical;
* normalizer: open_clip's ``_clean_lower`` = ``ftfy.fix_text`` -> ``html.unescape`` twice -> strip ->
  whitespace collapse -> ``str.lower``, expressed as a sequence of ``Replace``/``NFC``/``Strip``/
  ``Lowercase`` steps. The character tables are taken from the installed ftfy itself so they cannot
  drift from what open_clip runs. See TOKENIZER.md for what is, and is not, reproduced;
* pre-tokenizer: CLIP's regex (``Split``, matches kept) followed by byte-level mapping;
* model: BPE with the ``</w>`` end-of-word suffix;
* post-processor: ``<start_of_text> $A <end_of_text>`` (ids 49406/49407), truncation to 77 keeping
  EOT last, right padding with id 0 — together equal to a row of ``open_clip.tokenize``.

The output is deterministic (same inputs -> same bytes), so its sha256 can be pinned in the bundle
manifest and in the golden fixture. Regexes are restricted to the syntax both regex engines used by
``tokenizers`` accept identically (Oniguruma in the Python wheel, fancy-regex in the Rust crate
built with ``default-features = false``): no variable-length look-behind, code points written as
``\\x{...}``.

Usage: python models/export/build_tokenizer.py [--bpe PATH] [--out models/tokenizer/tokenizer.json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import html.entities
import importlib.util
import json
import sys
import unicodedata
from collections import OrderedDict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "models" / "tokenizer" / "tokenizer.json"

CONTEXT_LENGTH = 77
SOT = "<start_of_text>"
EOT = "<end_of_text>"
PAD_ID = 0
# SimpleTokenizer keeps merges[1 : 49152 - 256 - 2 + 1] (line 0 of the file is a header).
NUM_MERGES = 49152 - 256 - 2

# CLIP's pre-tokenisation regex as open_clip compiles it (special tokens first, IGNORECASE). The text
# is already lower-cased when it runs, so IGNORECASE changes only two things, spelled out here
# instead of relying on an engine's case-insensitive mode (the engines fold differently):
# * U+017F LATIN SMALL LETTER LONG S case-folds to "s", so "'ſ" is a contraction: [sſ];
# * U+0345 COMBINING GREEK YPOGEGRAMMENI folds to a letter, so the `regex` module matches it
#   with none of the alternatives and findall drops it: it is excluded from the last class.
CLIP_SPLIT_REGEX = (
    r"<[sſ]tart_of_text>|<end_of_text>|'[sſ]|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+"
)

# HTML character references decoded by the normalizer. ftfy and html.unescape know all 2231 HTML5
# names and every numeric reference, but each distinct output character costs one Replace pass over
# every input, so the set is bounded: the HTML 4.01 names (+ &apos;) in every case ftfy accepts, and
# numeric references to U+0000..U+00FF and to the HTML 4.01 characters.
NAMED_REFERENCES = frozenset(html.entities.name2codepoint) | {"apos"}
NUMERIC_REFERENCES = frozenset([*range(0x100), *html.entities.name2codepoint.values()])
# Special-token literals typed after punctuation are broken up this many times (see below).
SPECIAL_CHAIN = 3


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character table, copied from open_clip (ids depend on its order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_open_clip_bpe() -> Path:
    """Locate the vocabulary shipped in the installed open_clip package without importing it.

    Importing open_clip pulls in torch; only the data file is needed here.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip_torch is not installed; pass --bpe PATH")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.is_file():
            return candidate
    raise SystemExit("bpe_simple_vocab_16e6.txt.gz not found in the open_clip package; pass --bpe PATH")


def load_vocab_and_merges(bpe_path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Vocabulary (index = id) and merges (index = rank) exactly as SimpleTokenizer builds them."""
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"{bpe_path}: unexpected merges layout")
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend([SOT, EOT])
    if len(set(vocab)) != len(vocab):
        # SimpleTokenizer's dict(zip(vocab, ids)) would silently renumber duplicates.
        raise SystemExit("duplicate vocabulary entries; ids would not be reproducible")
    return vocab, merges


# ---------------------------------------------------------------------------------------------
# Regex helpers. Everything non-alphanumeric is written as \x{..} so patterns mean the same thing
# to Oniguruma, fancy-regex and the `regex` crate (which treats "--", "&&", "~~" in classes as set
# operators and rejects some escapes).
# ---------------------------------------------------------------------------------------------


def rx_char(c: str) -> str:
    """One literal character, escaped unless it is an ASCII letter or digit."""
    return c if c.isascii() and c.isalnum() else "\\x{%X}" % ord(c)


def rx_literal(s: str) -> str:
    """A literal string."""
    return "".join(rx_char(c) for c in s)


def rx_class(chars) -> str:
    """Character class matching exactly ``chars`` (ranges collapsed)."""
    cps = sorted({ord(c) for c in chars})
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append("\\x{%X}" % cps[i] if i == j else "\\x{%X}-\\x{%X}" % (cps[i], cps[j]))
        i = j + 1
    return "[" + "".join(parts) + "]"


def rx_either_case(s: str) -> str:
    """Literal where ASCII letters match either case without the engines' case-folding modes."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else rx_char(c) for c in s)


def replace(pattern: str, content: str) -> dict:
    """A ``Replace`` normalizer step (regex pattern, fixed replacement)."""
    return OrderedDict(type="Replace", pattern={"Regex": pattern}, content=content)


def chars_matching(pattern) -> list[str]:
    """Characters a (single-character) Python regex matches: lets ftfy's own regexes define classes."""
    return [chr(c) for c in range(0x10000) if pattern.fullmatch(chr(c))]


def group_by_output(mapping: dict[str, str]) -> dict[str, list[str]]:
    """Invert source->output so that one Replace rule can serve all sources of an output."""
    grouped: dict[str, list[str]] = {}
    for src, out in mapping.items():
        grouped.setdefault(out, []).append(src)
    return {out: sorted(srcs) for out, srcs in sorted(grouped.items())}


def char_rules(mapping: dict[str, str]) -> list[dict]:
    """One Replace per distinct output for a single-character -> string table."""
    return [replace(rx_class(srcs), out) for out, srcs in group_by_output(mapping).items()]


def ftfy_char_fixes(text: str) -> str:
    """ftfy's character-level fixes, in fix_text's order, repeated until stable like fix_text."""
    from ftfy import fixes

    while True:
        fixed = text
        for fix in (fixes.fix_c1_controls, fixes.fix_latin_ligatures, fixes.fix_character_width,
                    fixes.uncurl_quotes, fixes.remove_control_chars):
            fixed = fix(fixed)
        if fixed == text:
            return fixed
        text = fixed


# ---------------------------------------------------------------------------------------------
# HTML character references.
# ---------------------------------------------------------------------------------------------


def final_form(text: str) -> str:
    """What the rest of the pipeline would make of a decoded reference on its own.

    Emitting this directly lets references that end up the same share one Replace rule: whitespace
    becomes " " (the collapse would do it) and letters are lower-cased (Lowercase would), except Σ
    whose lower case depends on its neighbours.
    """
    if text.isspace():
        return " "
    return text if "\u03a3" in text else text.lower()


def composing_marks(chars: str) -> str | None:
    """Class of combining marks that NFC composes with any of ``chars`` (None if there are none)."""
    marks = [chr(m) for m in range(0x300, 0x10000) if unicodedata.combining(chr(m))
             and any(len(unicodedata.normalize("NFC", c + chr(m))) == 1 for c in chars)]
    return rx_class(marks) if marks else None


def semicolon_less_end(last: str, more: str = "") -> str:
    """Look-ahead ending a reference written without ";" (``last``: its final character).

    ``more``: characters that would extend the reference (html.unescape reads the longest digit
    run). Also, ftfy's NFC runs before html.unescape: in "&eacute" + U+0301 the "e" becomes "é"
    and the reference is gone, so none is decoded when a mark composing with ``last`` follows.
    """
    marks = composing_marks(last.lower() + last.upper())
    blocked = ([f"[{more}]"] if more else []) + ([r"\p{M}*" + marks] if marks else [])
    return "(?!%s)" % "|".join(blocked) if blocked else ""


def numeric_reference_regex(cp: int, terminator: str) -> str:
    """What follows "&" in ``&#<dec>`` / ``&#x<hex>`` for one code point (leading zeros allowed).

    ``terminator``: "required" (ftfy: ";" must follow), "absent" (html.unescape, ";" must not
    follow) or "optional" (html.unescape: ";" consumed if present).
    """
    dec, hexa = "%d" % cp, "%x" % cp
    forms = [("0*" + dec, dec[-1], "0-9"), ("[xX]0*" + rx_either_case(hexa), hexa[-1], "0-9a-fA-F")]
    if terminator == "required":
        return r"\x{23}(?:%s)\x{3B}" % "|".join(f for f, _, _ in forms)
    ends = {
        "absent": lambda last, more: r"(?!\x{3B})" + semicolon_less_end(last, more),
        "optional": lambda last, more: r"(?:\x{3B}|%s)" % semicolon_less_end(last, more),
    }[terminator]
    return r"\x{23}(?:%s)" % "|".join(f + ends(last, more) for f, last, more in forms)


def named_reference_regex(name: str, legacy: bool) -> str:
    """What follows "&" in ``&name;`` or, for one of html.unescape's legacy names, ``&name``.

    html.unescape decodes a legacy name without ";" as the longest legacy prefix of the following
    run of characters, unless the whole run is a longer HTML5 name ("&notin;" is not "¬in;").
    """
    if not legacy:
        return rx_literal(name + ";")
    longer = sorted(
        n[len(name):] for n in html.entities.html5 if n.endswith(";") and n.startswith(name) and n != name + ";"
    )
    guard = "(?!%s)" % "|".join(rx_literal(rest) for rest in longer) if longer else ""
    end = semicolon_less_end(name[-1])
    return r"%s%s(?:\x{3B}|%s)" % (rx_literal(name), guard, end) if end else rx_literal(name) + guard + r"\x{3B}?"


def reference_rules(html_entities: dict[str, str]) -> list[dict]:
    """Decode HTML character references as ftfy.fix_text + html.unescape twice would.

    * ftfy's unescape_html decodes ``&name;`` and ``&#N;`` (semicolon required), then its fixes run
      on the result, all repeated until nothing changes. So each rule emits the already-fixed
      character ("&rsquo;" -> "'", "&#146;" -> "'"), and the rules run after the character fixes,
      which is where a reference uncovered by a fix ("＆amp；", "&amp\ufeff;") gets decoded.
    * html.unescape additionally decodes the 106 legacy names and numeric references without ";";
      its output is not fixed any more, so where fixing would change it ("&#146" stays "’") the
      semicolon-less form gets its own rule.
    * "&" outputs come first, as one rule that collapses any run of them ("&amp;amp;", "&#38;amp;")
      to a single "&" the later rules can see ("&amp;lt;" -> "<").
    """
    legacy = {n for n in html.entities.html5 if not n.endswith(";")}
    wanted = {n.lower() for n in NAMED_REFERENCES}
    decoded: dict[str, str] = {}  # regex for what follows "&" -> replacement
    for ref, out in html_entities.items():
        name = ref[1:-1]
        if ref.startswith("&#") or name.lower() not in wanted:
            continue
        fixed = ftfy_char_fixes(out)
        if name in legacy and html.entities.html5[name] != fixed:
            raise SystemExit(f"&{name} would need separate ftfy / html.unescape rules")
        decoded[named_reference_regex(name, legacy=name in legacy)] = final_form(fixed)
    for cp in sorted(NUMERIC_REFERENCES):
        by_ftfy = final_form(ftfy_char_fixes(html.unescape("&#%d;" % cp)))
        by_html = final_form(html.unescape("&#%d" % cp))
        if by_ftfy == by_html:
            decoded[numeric_reference_regex(cp, "optional")] = by_ftfy
        else:
            decoded[numeric_reference_regex(cp, "required")] = by_ftfy
            decoded[numeric_reference_regex(cp, "absent")] = by_html
    grouped = group_by_output(decoded)
    amp = replace(r"\x{26}(?:%s)+" % "|".join(grouped.pop("&")), "&")
    return [amp] + [replace(r"\x{26}(?:%s)" % "|".join(alts), out) for out, alts in grouped.items()]


# ---------------------------------------------------------------------------------------------
# The normalizer.
# ---------------------------------------------------------------------------------------------


def final_sigma_rules() -> list[dict]:
    """Python's str.lower() maps Σ to ς at the end of a word; tokenizers' Lowercase is per character.

    Python's rule: Σ preceded by a cased letter (skipping case-ignorable characters) and not
    followed by (case-ignorable*) cased letter. Look-behind must have a fixed length for
    fancy-regex, so 0..3 intervening case-ignorable characters get a rule each.
    """
    cased = r"[\p{Cased}&&\P{Case_Ignorable}]"
    ignorable = r"\p{Case_Ignorable}"
    after = r"(?!%s*%s)" % (ignorable, cased)
    return [
        replace(r"(?<=%s%s)\x{3A3}%s" % (cased, ignorable * k, after), "\u03c2")
        for k in range(4)
    ]


def build_normalizer() -> dict:
    """Sequence mirroring ``whitespace_clean(basic_clean(text)).lower()`` (see TOKENIZER.md)."""
    import ftfy.bad_codecs  # noqa: F401  (registers "sloppy-windows-1252")
    from ftfy import chardata

    steps: list[dict] = []

    # --- ftfy.fix_text, in ftfy's own order (unescape_html moved last, see below) ------------
    # fix_c1_controls: C1 controls U+0080..U+009F read as Windows-1252, emitted already uncurled
    # (\x93 -> '"') like the references below, so that equal results share a rule
    c1 = {chr(b): ftfy_char_fixes(chr(b)) for b in range(0x80, 0xA0)}
    steps += char_rules({k: v for k, v in c1.items() if k != v})
    # fix_latin_ligatures
    steps += char_rules({chr(k): v for k, v in chardata.LIGATURES.items()})
    # fix_character_width: fullwidth ASCII / halfwidth katakana & hangul, U+3000
    steps += char_rules({chr(k): v for k, v in chardata.WIDTH_MAP.items()})
    # uncurl_quotes
    steps.append(replace(rx_class(chars_matching(chardata.SINGLE_QUOTE_RE)), "'"))
    steps.append(replace(rx_class(chars_matching(chardata.DOUBLE_QUOTE_RE)), '"'))
    # fix_line_breaks is omitted: it only maps whitespace to "\n", which the collapse below
    # turns into " " anyway (U+0085 never reaches it: fix_c1_controls maps it to "…" first).
    # remove_terminal_escapes: ESC [ digits/; letter  (Python's \d is Unicode Nd)
    steps.append(replace(r"\x{1B}\[[\p{Nd};]*[a-zA-Z]", ""))
    # remove_control_chars
    steps.append(replace(rx_class(chr(c) for c in chardata.CONTROL_CHARS), ""))
    # unescape_html, and what html.unescape(html.unescape(...)) adds (see reference_rules)
    steps += reference_rules(chardata.HTML_ENTITIES)
    # normalization="NFC"
    steps.append({"type": "NFC"})

    # --- strip + " ".join(text.split()) -------------------------------------------------------
    # str.split() splits on str.isspace() characters, which include U+001C..U+001F and are
    # spelled out rather than relying on an engine's \s.
    whitespace = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    steps.append(replace(rx_class(whitespace) + "+", " "))
    steps.append({"type": "Strip", "strip_left": True, "strip_right": True})

    # --- .lower() -----------------------------------------------------------------------------
    steps += final_sigma_rules()
    steps.append({"type": "Lowercase"})

    # --- special-token literals -----------------------------------------------------------------
    # open_clip recognises "<start_of_text>"/"<end_of_text>" typed in the text only where its regex
    # starts a match; after punctuation the "<" is swallowed by the punctuation run instead.
    # tokenizers matches added tokens anywhere, so break the literal there with a space (removed
    # by the Split below, which then yields the same pieces as open_clip).
    # A literal right after a recognised one is recognised too, hence the look-behinds; repeating
    # the rule handles chains ("!<end_of_text><end_of_text>") of up to SPECIAL_CHAIN literals.
    punct_before = r"(?<=[^\s\p{L}\p{N}\x{345}])(?<!<start_of_text>)(?<!<end_of_text>)"
    steps += [replace(punct_before + r"<(?=start_of_text>|end_of_text>)", "< ")] * SPECIAL_CHAIN

    return {"type": "Sequence", "normalizers": steps}


def special_token(content: str, token_id: int) -> dict:
    # normalized=True: matched in the normalized (lower-cased) text, where open_clip matches them.
    return OrderedDict(id=token_id, content=content, single_word=False, lstrip=False, rstrip=False,
                       normalized=True, special=True)


def template_token(content: str) -> dict:
    return {"SpecialToken": {"id": content, "type_id": 0}}


def build_tokenizer(bpe_path: Path) -> dict:
    """The complete tokenizer.json document."""
    vocab, merges = load_vocab_and_merges(bpe_path)
    ids = {tok: i for i, tok in enumerate(vocab)}
    sot_id, eot_id = ids[SOT], ids[EOT]
    if (sot_id, eot_id) != (49406, 49407):
        raise SystemExit(f"unexpected special token ids {sot_id}, {eot_id}")

    return OrderedDict(
        version="1.0",
        truncation=OrderedDict(direction="Right", max_length=CONTEXT_LENGTH, strategy="LongestFirst", stride=0),
        padding=OrderedDict(
            strategy={"Fixed": CONTEXT_LENGTH}, direction="Right", pad_to_multiple_of=None,
            pad_id=PAD_ID, pad_type_id=0, pad_token=vocab[PAD_ID],
        ),
        added_tokens=[special_token(SOT, sot_id), special_token(EOT, eot_id)],
        normalizer=build_normalizer(),
        pre_tokenizer=OrderedDict(
            type="Sequence",
            pretokenizers=[
                OrderedDict(type="Split", pattern={"Regex": CLIP_SPLIT_REGEX}, behavior="Removed", invert=True),
                OrderedDict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False),
            ],
        ),
        post_processor=OrderedDict(
            type="TemplateProcessing",
            single=[template_token(SOT), {"Sequence": {"id": "A", "type_id": 0}}, template_token(EOT)],
            pair=[
                template_token(SOT), {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}}, template_token(EOT),
            ],
            special_tokens={
                SOT: {"id": SOT, "ids": [sot_id], "tokens": [SOT]},
                EOT: {"id": EOT, "ids": [eot_id], "tokens": [EOT]},
            },
        ),
        # SimpleTokenizer.decode: bytes -> text, then every "</w>" -> " " (trailing space included).
        # No Strip decoder: tokenizers 0.22's panics on an empty decode.
        decoder=OrderedDict(
            type="Sequence",
            decoders=[
                OrderedDict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False),
                OrderedDict(type="Replace", pattern={"String": "</w>"}, content=" "),
            ],
        ),
        model=OrderedDict(
            type="BPE", dropout=None, unk_token=None, continuing_subword_prefix=None,
            end_of_word_suffix="</w>", fuse_unk=False, byte_fallback=False, ignore_merges=False,
            vocab=ids, merges=[list(m) for m in merges],
        ),
    )


# Containers written one entry per line: the 49k-entry vocab and merges stay compact and diffable,
# and each normalizer step is one line (ASCII-escaped, so invisible characters show).
ONE_ENTRY_PER_LINE = {("model", "vocab"): False, ("model", "merges"): False, ("normalizer", "normalizers"): True}


def dumps(tokenizer: dict) -> str:
    """Stable, reviewable JSON (same input -> same bytes)."""

    def fmt(value, path: tuple, depth: int) -> str:
        pad, end = "  " * (depth + 1), "  " * depth
        if path in ONE_ENTRY_PER_LINE:
            def compact(v) -> str:
                return json.dumps(v, ensure_ascii=ONE_ENTRY_PER_LINE[path])

            if isinstance(value, dict):
                items = [f"{pad}{compact(k)}: {compact(v)}" for k, v in value.items()]
                return "{\n" + ",\n".join(items) + "\n" + end + "}"
            return "[\n" + ",\n".join(pad + compact(v) for v in value) + "\n" + end + "]"
        if isinstance(value, dict) and value:
            items = [f"{pad}{json.dumps(k)}: {fmt(v, path + (k,), depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + end + "}"
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            return "[\n" + ",\n".join(pad + fmt(v, path, depth + 1) for v in value) + "\n" + end + "]"
        return json.dumps(value, ensure_ascii=False)

    return fmt(tokenizer, (), 0) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz (default: the one in open_clip)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    bpe_path = args.bpe or find_open_clip_bpe()
    text = dumps(build_tokenizer(bpe_path))

    # Fail here rather than in the daemon if the file is not loadable.
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("warning: `tokenizers` not installed, output not validated", file=sys.stderr)
    else:
        Tokenizer.from_str(text)

    data = text.encode("utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
