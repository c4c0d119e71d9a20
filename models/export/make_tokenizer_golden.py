#!/usr/bin/env python3
"""Write ``tests/fixtures/tokenizer_golden.json``: open_clip's own token ids for a fixed set of texts.

The fixture is the reference the exported ``tokenizer.json`` is held to by
``models/tests/test_tokenizer.py``, which needs neither torch nor open_clip.
Ids come from ``open_clip.tokenize`` (the padded 77-long row) and ``SimpleTokenizer.encode``
(the unpadded, untruncated ``[SOT] tokens [EOT]``), so the fixture records what open_clip does, not
what the exported file does.

The case list is explicit and deterministic: class names and prompts from many domains, and the
inputs that stress the text cleanup (punctuation, contractions, accents and non-Latin scripts,
emoji, curly quotes, HTML references, unusual whitespace, control characters, over-long prompts,
empty input). ``DIVERGENCES`` holds inputs the exported tokenizer knowingly cannot reproduce
(documented in models/export/TOKENIZER.md); they are recorded separately so tests can report them
without counting them as failures.

The script also checks the current ``tokenizer.json`` against the cases and stores its sha256, so
the fixture certifies one specific file.

Usage: python models/export/make_tokenizer_golden.py [--tokenizer PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import unicodedata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = REPO_ROOT / "models" / "tokenizer" / "tokenizer.json"
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "tokenizer_golden.json"
CONTEXT_LENGTH = 77

# --- class names -------------------------------------------------------------------------------
ANIMALS = [
    "cat", "dog", "horse", "cow", "sheep", "elephant", "giraffe", "zebra", "lion", "tiger",
    "polar bear", "kangaroo", "koala", "platypus", "hummingbird", "bald eagle", "great white shark",
    "octopus", "axolotl", "chameleon", "hedgehog", "red panda", "sea otter", "box turtle",
]
DOG_BREEDS = [
    "golden retriever", "Labrador Retriever", "German Shepherd Dog", "French Bulldog", "Beagle",
    "Chihuahua", "Shih Tzu", "Yorkshire Terrier", "Pembroke Welsh Corgi", "Bernese Mountain Dog",
    "Dachshund", "Cavalier King Charles Spaniel", "Xoloitzcuintli", "Shiba Inu", "Bichon Frise",
    "Saint Bernard", "Dogue de Bordeaux", "Löwchen", "Pharaoh Hound", "Staffordshire Bull Terrier",
]
FOODS = [
    "pizza", "sushi", "ramen", "pad thai", "spaghetti carbonara", "hamburger", "french fries",
    "apple pie", "crème brûlée", "jalapeño poppers", "bibimbap", "pho", "tiramisu", "baklava",
    "chicken tikka masala", "fish and chips", "macarons", "churros", "dim sum", "falafel",
]
OBJECTS = [
    "laptop", "coffee mug", "umbrella", "bicycle", "traffic light", "fire hydrant", "toothbrush",
    "refrigerator", "microwave oven", "smartphone", "wristwatch", "electric guitar", "teddy bear",
    "hair drier", "parking meter", "skateboard", "tennis racket", "wine glass", "cell phone",
    "USB flash drive", "3D printer", "LED lamp", "T-shirt", "iPhone", "X-ray film",
]
SHAPES = ["circle", "square", "triangle", "hexagon", "star", "crescent", "ellipse", "pentagon", "rhombus", "spiral"]
TEXTURES = [
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "frilly", "honeycombed",
    "knitted", "lacelike", "marbled", "paisley", "zigzagged",
]
SCENES = [
    "abbey", "airport terminal", "alley", "amphitheater", "bamboo forest", "boardwalk",
    "coral reef", "desert road", "glacier", "lighthouse", "rice paddy", "ski slope",
]

# --- prompts -------------------------------------------------------------------------------------
TEMPLATES = [
    "a photo of a {}.", "a photo of a {}, a type of food.", "a photo of a {}, a type of pet.",
    "a bad photo of a {}.", "a close-up photo of the {}.", "a blurry photo of a {}.",
    "a photo of the hard to see {}.", "itap of a {}.", "a photo of my {}.",
    "a {} texture.", "a photo of a {} shape.", "a black and white photo of the {}.",
    "art of the {}.", "a tattoo of a {}.", "a origami {}.", "a low resolution photo of the {}.",
]

# --- hard inputs, by category --------------------------------------------------------------------
PUNCTUATION_AND_DIGITS = [
    "3.14159", "1,000,000", "2024-01-31", "route 66", "A4 paper", "24/7", "100%", "#hashtag",
    "@username", "e-mail", "C++", "U.S.A.", "(parentheses)", "[brackets]", "{braces}",
    "semi;colon", "ellipsis...", "what?!", "~tilde~", "under_score", "back\\slash", 'say "cheese"',
    "pipe|pipe", "star*", "a+b=c", "$5.99", "€10", "£3", "¥100", "50°C", "½ cup", "x² + y²",
    "№ 5", "1st 2nd 3rd 4th", "0123456789", "٣٤٥ Arabic-Indic digits", "Ⅻ roman", "①②③",
    "!!!???...", "-_-", ":-)", "<3", "->", "a/b/c", "http://example.com/a?b=c&d=e", "C:\\Windows",
]
APOSTROPHES = [
    "it's", "don't", "they're", "we've", "I'm", "you'll", "she'd", "IT'S", "DON'T", "rock 'n' roll",
    "'s", "'quoted'", "o'clock", "jack-o'-lantern", "Ma'am", "'tis", "dogs' toys", "y'all'd've",
    "it’s", "it‘s", "it‛s", "itʼs", "“double”", "„German“", "«French»", "‹single›", "it's'", "''",
    "'ſ and 'S", "the cat's toy's owner's", "c'est la vie", "l'été",
]
ACCENTED_AND_SCRIPTS = [
    "crème brûlée", "pâte à choux", "Île-de-France", "œuf", "Schloß Neuschwanstein", "Müller",
    "Straße", "GROẞE STRASSE", "Äpfel und Öl", "jalapeño", "¿Dónde está la biblioteca?", "¡Olé!",
    "pão de açúcar", "Ακρόπολη", "ΟΔΟΣ", "σοφία", "ΣΊΣΥΦΟΣ", "ΣΣ", "ΑΣ.", "Σ", "ΌΣΟΣ ΤΟ ΘΈΛΕΙΣ",
    "Москва", "ёжик", "ЁЖИК", "Київ", "猫", "寿司", "東京タワー", "ラーメン", "김치", "비빔밥",
    "قطة", "السلام عليكم", "שלום", "नमस्ते", "बिल्ली", "แมว", "phở bò", "Tiếng Việt", "İstanbul",
    "ıslak", "DİYARBAKIR", "Łódź", "řeřicha", "Þingvellir", "Ærø", "cafe\u0301 (decomposed)",
    "\u1100\u1161\u11a8 jamo", "ድመት", "კატა", "Երևան", "பூனை", "বিড়াল", "ǅemal", "Ĳssel",
    "ſtraße", "K Kelvin", "Ω ohm", "Å angstrom", "a\u0301\u0302 stacked", "𝐀𝐁𝐂 math bold",
    "ℌ𝔢𝔩𝔩𝔬", "\ue000 private use",
]
EMOJI = [
    "🐶", "🐱 cat", "👍🏽", "👨\u200d👩\u200d👧\u200d👦 family", "🇫🇷 flag", "❤️", "🏳️\u200d🌈",
    "🍕🍔🍟", "😀😃😄", "1️⃣ keycap", "©️ sign", "☕ coffee", "🏴\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f Wales",
    "a photo of a 🦊.", "🦄🦄🦄🦄",
]
QUOTES = [
    "“Hello,” she said.", "‘single’", "He said ‘it’s fine’.", "\u201fodd\u201e", "″inch″ and ′foot′",
    "«guillemets»", "＂fullwidth＂", "＇fullwidth＇",
]
HTML_REFERENCES = [
    "&amp;", "Tom &amp; Jerry", "&quot;quoted&quot;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;", "it&#39;s",
    "it&#x27;s", "it&#X27;s", "&apos;tis", "a&nbsp;b", "caf&eacute;", "CAF&EACUTE;", "it&rsquo;s",
    "&ldquo;hi&rdquo;", "&amp;amp;", "&amp;quot;x&amp;quot;", "&amp;lt;", "&amp;amp;amp;amp;",
    "it&#8217;s", "it&#146;s", "&copy; 2024", "&copy 2024", "AT&amp;T", "AT&T", "R&D", "&hellip;",
    "&mdash;", "20&deg;C", "5 &times; 3", "&alpha;-helix", "&hearts;", "&#169;", "&nbsp&nbsp",
    "salt &amp pepper", "&#39", "&#x41;BC", "&#65;", "&#0065;", "fish &amp; chips", "this&not that",
    "&Eacute;cole", "&AMP;", "&QUOT;", "&unknown;", "& amp;", "&#;", "&#x;", "&euro;5", "&#8364;5",
    "&szlig;", "&SZLIG;", "&Uuml;ber", "&ndash;", "&#8212;", "&#x2014;", "&bull; item", "&trade;",
    "&eacute", "&eacutex;", "&#233;t&#233;", "&#10;newline", "&#9;tab", "&ensp;en space",
]
WHITESPACE = [
    "  leading", "trailing  ", "tab\tseparated", "new\nline", "crlf\r\nline", "\u00a0nbsp",
    "ideographic\u3000space", "em\u2003space", "zero\u200bwidth", "mixed \t\n\r\f\v whitespace",
    "line\u2028separator", "para\u2029separator", "next\x85line", "file\x1cseparator",
    "   many    spaces   between   ", "\n\n\nnewlines\n\n", "a\u202fb\u205fc\u1680d",
]
CONTROL_AND_FTFY = [
    "ﬁsh ﬂower ﬀ ﬃ ﬄ ﬅ ﬆ", "ＬＯＵＤ　ＮＯＩＳＥＳ", "Ｕﾀｰﾝ", "ｶﾞｷﾞｸﾞ", "ﾗｰﾒﾝ", "ﾊﾟﾝ",
    "\x93quoted\x94", "\x80 euro", "\x85", "\x81", "\x1b[31mred\x1b[0m", "\x1b[1;32mbold", "\ufeffbom",
    "soft\u00adhyphen", "zw\u200dj", "a\x00b\x07c\x7fd", "rtl\u200fmark", "\u206aold\u206f",
    "\ufffcobject", "\ufffdreplacement", "var\ufe0fsel", "İ", "ǆ Ǆ ǅ", "ŉ",
]
SPECIAL_LITERALS = [
    "<start_of_text>", "<end_of_text>", "a <start_of_text> b", "!<start_of_text>", "<START_OF_TEXT>",
    "x<end_of_text>y", "<start_of_text><end_of_text>", "<|startoftext|>", "<|endoftext|>", "</w>",
    "a</w>b", "<ſtart_of_text>", "'<start_of_text>", "(<end_of_text>)",
]
LONG_WORDS = (
    "the quick brown fox jumps over the lazy dog while a curious cat watches from the windowsill "
    "and a small bird sings in the old oak tree near the river bank on a bright and sunny morning "
    "in the middle of a long and warm summer that nobody in the quiet little village will forget"
)
LONG = [
    LONG_WORDS,
    LONG_WORDS.upper(),
    "a photo of a " + ", ".join(["golden retriever"] * 30) + ".",
    "a" * 300,
    "1234567890" * 10,
    "🐶" * 40,
    "猫" * 100,
    " ".join(str(i) for i in range(100)),
    "supercalifragilisticexpialidocious " * 12,
    "crème brûlée, " * 20,
    "&amp; " * 80,
    " ".join(["dog"] * 74),  # 74 tokens + SOT + EOT = 76
    " ".join(["dog"] * 75),  # exactly 77
    " ".join(["dog"] * 76),  # one over
    " ".join(["dog"] * 77),
]
EMPTY = ["", " ", "   ", "\t\n", "\u3000", "\u00a0\u2003", "&nbsp;", "\x00", "\ufeff"]

# Inputs the exported tokenizer cannot reproduce; see TOKENIZER.md ("Not reproduced").
DIVERGENCES = [
    ("cafÃ©", "mojibake repaired by ftfy.fix_encoding"),
    ("â€œquotedâ€\x9d", "mojibake repaired by ftfy.fix_encoding"),
    ("<b>it&rsquo;s</b>", "a literal '<' turns off ftfy's HTML unescaping (curly quote kept)"),
    ("&spades;&clubsuit;", "named reference outside the HTML 4.01 set (&clubsuit;)"),
    ("&#128512;", "numeric reference outside the supported code points"),
    ("\ua7cb", "lower-case mapping added after Unicode 14 (Python 3.11's tables)"),
]


def imagenet_sample() -> list[str]:
    """Every 20th ImageNet class name as open_clip spells them (apostrophes, hyphens, capitals)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES[::20])


def cases() -> list[tuple[str, str]]:
    """(category, text) pairs in a fixed order; duplicates dropped, first occurrence kept."""
    names = ANIMALS + DOG_BREEDS + FOODS + OBJECTS + SHAPES + TEXTURES + SCENES
    groups: list[tuple[str, list[str]]] = [
        ("animal", ANIMALS), ("dog_breed", DOG_BREEDS), ("food", FOODS), ("object", OBJECTS),
        ("shape", SHAPES), ("texture", TEXTURES), ("scene", SCENES), ("imagenet", imagenet_sample()),
        ("prompt", [t.format(names[(i * 7 + k * 37) % len(names)]) for i, t in enumerate(TEMPLATES) for k in range(4)]),
        ("punctuation_digits", PUNCTUATION_AND_DIGITS), ("apostrophe", APOSTROPHES),
        ("accented_non_latin", ACCENTED_AND_SCRIPTS), ("emoji", EMOJI), ("quotes", QUOTES),
        ("html", HTML_REFERENCES), ("whitespace", WHITESPACE), ("control_ftfy", CONTROL_AND_FTFY),
        ("special_literal", SPECIAL_LITERALS), ("long", LONG), ("empty", EMPTY),
    ]
    seen, out = set(), []
    for category, texts in groups:
        for text in texts:
            if text not in seen:
                seen.add(text)
                out.append((category, text))
    return out


def reference_ids(texts: list[str]) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """(padded 77-long rows from open_clip.tokenize, untruncated [SOT]+encode+[EOT], decode(encode))."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    rows = open_clip.tokenize(texts, context_length=CONTEXT_LENGTH).tolist()
    encoded = [simple.encode(t) for t in texts]
    full = [[simple.sot_token_id] + e + [simple.eot_token_id] for e in encoded]
    return rows, full, [simple.decode(e) for e in encoded]


def source_description() -> str:
    import ftfy
    import open_clip
    import regex
    from open_clip.tokenizer import default_bpe

    bpe_sha = hashlib.sha256(Path(default_bpe()).read_bytes()).hexdigest()
    return (
        f"open_clip_torch {open_clip.__version__} open_clip.tokenize / SimpleTokenizer "
        f"(bpe_simple_vocab_16e6.txt.gz sha256 {bpe_sha}), ftfy {ftfy.__version__}, regex {regex.__version__}, "
        f"Python {platform.python_version()} (Unicode {unicodedata.unidata_version})"
    )


def check_tokenizer(path: Path, texts: list[str], rows: list[list[int]]) -> list[str]:
    """Texts whose ids from ``path`` differ from open_clip's (empty list: all match)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    got = [e.ids for e in tok.encode_batch(texts)]
    return [t for t, g, r in zip(texts, got, rows) if g != r]


def dumps_line(obj) -> str:
    """Compact JSON with readable text, but every invisible character escaped.

    Keeps one case per line even for texts holding U+2028, U+0085, NBSP, zero-width or tag
    characters, and makes such characters visible in diffs.
    """
    out = []
    for c in json.dumps(obj, ensure_ascii=False):
        if c.isprintable() and (c == " " or not c.isspace()):
            out.append(c)
        elif ord(c) > 0xFFFF:
            hi, lo = divmod(ord(c) - 0x10000, 0x400)
            out.append("\\u%04x\\u%04x" % (0xD800 + hi, 0xDC00 + lo))
        else:
            out.append("\\u%04x" % ord(c))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    labelled = cases()
    texts = [t for _, t in labelled]
    rows, full, decoded = reference_ids(texts)
    div_texts = [t for t, _ in DIVERGENCES]
    div_rows, div_full, _ = reference_ids(div_texts)

    tokenizer_bytes = args.tokenizer.read_bytes()
    mismatches = check_tokenizer(args.tokenizer, texts, rows)
    still_divergent = check_tokenizer(args.tokenizer, div_texts, div_rows)

    fixture = {
        "context_length": CONTEXT_LENGTH,
        "source": source_description(),
        "tokenizer_sha256": hashlib.sha256(tokenizer_bytes).hexdigest(),
        "tokenizer_size": len(tokenizer_bytes),
        "cases": [
            {"category": c, "text": t, "ids": r, "encoded": f, "decoded": d}
            for (c, t), r, f, d in zip(labelled, rows, full, decoded)
        ],
        "divergences": [
            {"text": t, "reason": why, "ids": r, "encoded": f}
            for (t, why), r, f in zip(DIVERGENCES, div_rows, div_full)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One case per line: readable diffs when open_clip or the case list changes.
    lines = [dumps_line(c) for c in fixture["cases"]]
    dlines = [dumps_line(c) for c in fixture["divergences"]]
    head = {k: v for k, v in fixture.items() if k not in ("cases", "divergences")}
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ",\n"
    text += ' "cases": [\n  ' + ",\n  ".join(lines) + "\n ],\n"
    text += ' "divergences": [\n  ' + ",\n  ".join(dlines) + "\n ]\n}\n"
    if json.loads(text) != fixture:  # the hand-assembled layout must say the same thing
        raise SystemExit("fixture serialisation error")
    args.out.write_text(text, encoding="utf-8")

    print(f"wrote {args.out}: {len(texts)} cases, {len(DIVERGENCES)} documented divergences")
    print(f"{args.tokenizer}: {len(texts) - len(mismatches)}/{len(texts)} cases match")
    for t in mismatches:
        print(f"  MISMATCH {t!r}")
    for t in sorted(set(div_texts) - set(still_divergent)):
        print(f"  note: divergence now matches: {t!r}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
