import json
import random
import re
from decimal import Decimal

import pytest

from tailgate.config import hujson
from tailgate.config.hujson import HujsonError, is_blank, key_path, loads, parse

PLAIN_JSON = [
    "{}",
    "[]",
    '""',
    "0",
    "-0",
    "-12.5e-3",
    "1E400",
    "123456789012345678901234567890",
    "true",
    "null",
    '{"a": [1, 2.0, {"b": null}], "c": "d"}',
    '"\\u00e9\\ud83d\\ude00 \\"quoted\\" \\\\ back \\/ slash \\b\\f\\n\\r\\t"',
    '"é 😀 plain unicode"',
    '{"a": 1, "a": 2}',
    ' \n\t\r [ 1 , "x" ] \r\n',
    '{"": {"": []}}',
    '{"url": "http://example.com/a//b", "glob": "a/*/b", "close": "*/"}',
]


@pytest.mark.parametrize("text", PLAIN_JSON)
def test_plain_json_parses_exactly_as_json_loads(text: str) -> None:
    assert loads(text) == json.loads(text)
    assert type(loads(text)) is type(json.loads(text))


def _random_text(rng: random.Random) -> str:
    alphabet = 'ab/*"\\\n\t é😀,]}//'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def _random_value(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind in (3, 4):
        return _random_text(rng)
    if kind in (5, 6):
        return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def _decorate(dumped: str) -> str:
    """Add comments at every line break and a trailing comma before every closing bracket."""
    lines = dumped.split("\n")
    out = []
    for index, line in enumerate(lines):
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        comma = "," if following[:1] in ("]", "}") and not line.rstrip().endswith(("[", "{")) else ""
        out.append(line + comma + (' // c */ " ' if index % 2 else " /* // c */"))
    return "\n".join(out)


def test_random_documents_round_trip_with_comments_and_trailing_commas() -> None:
    rng = random.Random(20261122)
    for _ in range(200):
        value = _random_value(rng, 0)
        dumped = json.dumps(value, indent=2, ensure_ascii=rng.random() < 0.5)
        assert loads(dumped) == json.loads(dumped)
        assert loads(_decorate(dumped)) == json.loads(dumped)


def test_comments_and_trailing_commas() -> None:
    text = """
    // leading comment
    {
      /* block
         comment */ "a": 1, // after a member
      "b": [1, 2, [3,], {"c": 4,},], /* before the close */
      "s": "// not a comment /* nor this */",
    } // trailing comment without newline"""
    assert loads(text) == {"a": 1, "b": [1, 2, [3], {"c": 4}], "s": "// not a comment /* nor this */"}


def test_tricky_strings() -> None:
    assert loads(r'{"a": "say \"hi\" // x", "b": "c:\\"} // "') == {"a": 'say "hi" // x', "b": "c:\\"}
    assert loads('["*/", "/*", "\\\\", "\\"/*"]') == ["*/", "/*", "\\", '"/*']
    assert loads('{"a": "x" /* "y" */ }') == {"a": "x"}


def test_crlf_line_endings() -> None:
    text = '{\r\n  // comment\r\n  "a": 1,\r\n  "b": "x\\r\\n",\r\n}\r\n'
    assert loads(text) == {"a": 1, "b": "x\r\n"}
    with pytest.raises(HujsonError) as caught:
        loads('{\r\n  "a": 1\r\n  "b": 2\r\n}')
    assert (caught.value.line, caught.value.column) == (3, 3)


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}'"),
        ("[,]", 1, 2, "expected a value"),
        ("{,}", 1, 2, "quoted"),
        ("[1,,]", 1, 4, "expected a value"),
        ('{"a": 1,,}', 1, 9, "quoted"),
        ('{"a" 1}', 1, 6, "expected ':'"),
        ("[1] /* open", 1, 5, "unterminated /* comment"),
        ('{"a": "open}', 1, 7, "unterminated string"),
        ('["tab\there"]', 1, 6, "invalid control character"),
        ('["\\x"]', 1, 3, "invalid \\escape"),
        ("[1] / 2", 1, 5, "unexpected text"),
        ("[1 / 2]", 1, 4, "expected ',' or ']'"),
        ("/ [1]", 1, 1, "lone '/'"),
        ("NaN", 1, 1, "expected a value"),
        ("[-Infinity]", 1, 2, "expected a value"),
        ("[01]", 1, 3, "expected ',' or ']'"),
        ("", 1, 1, "end of the text"),
        ("  // only a comment\n", 2, 1, "end of the text"),
        ('{"a": [1, 2}', 1, 12, "expected ',' or ']'"),
        ('{"a": }', 1, 7, "expected a value, found '}'"),
        ("{'a': 1}", 1, 2, "quoted"),
        ("[tru]", 1, 2, "expected a value"),
        ("[1]\n[2]", 2, 1, "unexpected text"),
    ],
)
def test_errors_have_positions(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(HujsonError) as caught:
        loads(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"line {line}, column {column}: ")


def test_duplicate_keys_are_reported_with_their_path_and_the_last_wins() -> None:
    parsed = parse('{"p": {"x": {"k": 1},\n "x": {"k": 2, "k": 3}}, "odd.key": [{"a": 1, "a": 2}]}')
    assert parsed.value == {"p": {"x": {"k": 3}}, "odd.key": [{"a": 2}]}
    assert [(d.path, d.line, d.column) for d in parsed.duplicates] == [
        ("p.x.k", 2, 16),
        ("p.x", 2, 2),
        ("[odd.key][0].a", 2, 47),
    ]


def test_parse_float_hook_keeps_decimals_exact() -> None:
    assert parse('{"a": 1.1, "b": 2}', parse_float=Decimal).value == {"a": Decimal("1.1"), "b": 2}


def test_nesting_is_bounded() -> None:
    deep = "[" * (hujson.MAX_DEPTH + 1) + "]" * (hujson.MAX_DEPTH + 1)
    with pytest.raises(HujsonError, match="nesting deeper"):
        loads(deep)
    ok = "[" * hujson.MAX_DEPTH + "]" * hujson.MAX_DEPTH
    assert loads(ok) == json.loads(ok)


def test_is_blank() -> None:
    assert is_blank("")
    assert is_blank("  // c\n /* c */ \r\n")
    assert not is_blank("{}")
    assert not is_blank("/* unterminated")


def test_key_path() -> None:
    assert key_path("", "providers") == "providers"
    assert key_path("providers", "open-ai_2") == "providers.open-ai_2"
    assert (
        key_path("grants[0].app", "tailscale.com/cap/aperture") == "grants[0].app[tailscale.com/cap/aperture]"
    )
    assert re.fullmatch(r"\[a b\]", key_path("", "a b"))
