"""Compose's interpolation and `.env` files, pinned to the Compose Specification's reference
implementation. The cases are ported from compose-go (github.com/compose-spec/compose-go, v2):
template/template_test.go for interpolation, dotenv/parser_test.go and dotenv/godotenv_test.go
for `.env` files; each test names the Go test it comes from. The README's list of rules
("From a compose file") is covered rule by rule: see test_readme_rules_are_pinned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lbctl.compose.interpolate import (
    interpolate,
    interpolate_text,
    parse_docker_env_file,
    parse_dotenv,
)
from lbctl.model import InvalidInput

# template_test.go's `defaults` mapping.
ENV = {"FOO": "first", "BAR": "", "JSON": '{"json":2}'}


def sub(text: str, env: dict[str, str] | None = None) -> str:
    return interpolate_text(text, ENV if env is None else env, "services.web.image")


# ---- values (template_test.go) --------------------------------------------------------------

@pytest.mark.parametrize(("text", "out"), [
    # TestEscaped, TestSubstituteNoMatch
    ("$${foo}", "${foo}"), ("foo", "foo"),
    # TestUnescaped: a `$` that starts nothing is kept
    ("a $ string", "a $ string"), ("^REGEX$", "^REGEX$"), ("$}", "$}"), ("$", "$"),
    # TestNonBraced (docker/compose#8601): a bare name ends at the first non-name character
    ("$FOO-bar", "first-bar"),
    # TestNoValueNoDefault, TestValueNoDefault
    ("This ${missing} var", "This  var"), ("This ${BAR} var", "This  var"),
    ("This $FOO var", "This first var"), ("This ${FOO} var", "This first var"),
    # TestNoValueWithDefault, Test{Empty,}ValueWith{Soft,Hard}Default
    ("ok ${missing:-def}", "ok def"), ("ok ${missing-def}", "ok def"),
    ("ok ${BAR:-def}", "ok def"), ("ok ${FOO:-def}", "ok first"), ("ok ${BAR-def}", "ok "),
    # TestPresentValue*: `:+` and `+`
    ("ok ${UNSET_VAR:+presence_value}", "ok "), ("ok ${UNSET_VAR+presence_value}", "ok "),
    ("ok ${FOO:+presence_value}", "ok presence_value"),
    ("ok ${FOO+presence_value}", "ok presence_value"),
    ("ok ${BAR+presence_value}", "ok presence_value"), ("ok ${BAR:+presence_value}", "ok "),
    # TestNonAlphanumericDefault
    ("ok ${BAR:-/non:-alphanumeric}", "ok /non:-alphanumeric"),
    # TestLazyDefaultDoesNotWarn, TestLazyDefaultWarnsWhenUsed
    ("${A:+${A},}B", "B"), ("${A:-${B}}", ""),
    # TestInterpolationExternalInterference: operators outside ${} are text
    ("-ok ${BAR:-defaultValue}", "-ok defaultValue"), ("+ok ${UNSET:-${BAR-defaultValue}}", "+ok "),
    ("-ok ${FOO:-defaultValue}", "-ok first"), (":-ok ${UNSET-defaultValue}", ":-ok defaultValue"),
    (":-ok ${BAR-defaultValue}", ":-ok "), (":?ok ${BAR-defaultValue}", ":?ok "),
    (":?ok ${BAR:-defaultValue}", ":?ok defaultValue"),
    (":+ok ${BAR:-defaultValue}", ":+ok defaultValue"), ("+ok ${BAR-defaultValue}", "+ok "),
    ("?ok ${BAR:-defaultValue}", "?ok defaultValue"),
    # TestDefaultsWithNestedExpansion
    ("ok ${UNSET_VAR-$FOO}", "ok first"), ("ok ${UNSET_VAR-${FOO}}", "ok first"),
    ("ok ${UNSET_VAR-${FOO} ${FOO}}", "ok first first"), ("ok ${BAR:-$FOO}", "ok first"),
    ("ok ${BAR:-${FOO}}", "ok first"), ("ok ${BAR:-${FOO} ${FOO}}", "ok first first"),
    ("ok ${BAR+$FOO}", "ok first"), ("ok ${BAR+$FOO ${FOO:+second}}", "ok first second"),
    # TestDefaultsForMandatoryVariables
    ("ok ${FOO:?err}", "ok first"), ("ok ${FOO?err}", "ok first"), ("ok ${BAR?err}", "ok "),
    # TestSubstituteWithReplacementFunc's last case
    ("ok ${SUBDOMAIN:-redis}.${FOO:?}", "ok redis.first"),
    # TestPrecedence: the first operator after the name decides
    ("${UNSET_VAR-myerror?msg}", "myerror?msg"), ("${FOO?bar-baz}", "first"),
    ("${BAR:-default_value_for_empty_var}", "default_value_for_empty_var"),
    ("${UNSET_VAR-default_value_for_unset_var}", "default_value_for_unset_var"),
    # Test{No,}ValueWithCurlyBracesDefault: braces in a default count in pairs
    ('ok ${missing:-{"json":1}}', 'ok {"json":1}'), ('ok ${missing-{"json":1}}', 'ok {"json":1}'),
    ('ok ${JSON:-{"json":1}}', 'ok {"json":2}'), ('ok ${JSON-{"json":1}}', 'ok {"json":2}'),
    # the specification's examples (12-interpolation.md) and a few of lbctl's own
    ("${UNSET:-${UNSET2:-default}}", "default"),
    ("$$VAR_NOT_INTERPOLATED", "$VAR_NOT_INTERPOLATED"),
    ("a $$FOO b", "a $FOO b"), ("$FOO$FOO", "firstfirst"), ("${foo_lower:-x}", "x"),
    ("img:${TAG:-1.4}", "img:1.4"), ("${UNSET:-a b:c}", "a b:c"),
])
def test_substitution(text: str, out: str) -> None:
    assert sub(text) == out


@pytest.mark.parametrize(("text", "message"), [
    # TestMandatoryVariableErrors
    ("not ok ${UNSET_VAR:?Mandatory Variable Unset}",
     "required variable UNSET_VAR is missing a value: Mandatory Variable Unset"),
    ("not ok ${BAR:?Mandatory Variable Empty}",
     "required variable BAR is missing a value: Mandatory Variable Empty"),
    ("not ok ${UNSET_VAR:?}", "required variable UNSET_VAR is missing a value"),
    ("not ok ${UNSET_VAR?Mandatory Variable Unset}",
     "required variable UNSET_VAR is missing a value: Mandatory Variable Unset"),
    ("not ok ${UNSET_VAR?}", "required variable UNSET_VAR is missing a value"),
    # TestMandatoryVariableErrorsWithNestedExpansion: the message is interpolated too
    ("not ok ${UNSET_VAR:?Mandatory Variable ${FOO}}",
     "required variable UNSET_VAR is missing a value: Mandatory Variable first"),
    ("not ok ${UNSET_VAR?Mandatory Variable ${FOO}}",
     "required variable UNSET_VAR is missing a value: Mandatory Variable first"),
    # TestPrecedence
    ("${UNSET_VAR?bar-baz}", "required variable UNSET_VAR is missing a value: bar-baz"),
    # a required variable inside a default
    ("${UNSET:-${NEEDED:?set NEEDED}}", "required variable NEEDED is missing a value: set NEEDED"),
])
def test_required(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        sub(text)
    assert str(e.value) == f"error while interpolating services.web.image: {message}"


@pytest.mark.parametrize("text", [
    # TestInvalid
    "${", "${}", "${ }", "${ foo}", "${foo }", "${foo!}",
    # and in context: the whole value is shown, as compose-go does
    "img:${1}", "${FOO:x}", "${FOO",
])
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidInput) as e:
        sub(text)
    assert str(e.value) == ("invalid interpolation format for services.web.image. You may "
                            f"need to escape any $ with another $. {text}")
    assert "\n" not in str(e.value)


def test_invalid_inside_a_default_names_the_default() -> None:
    """compose-go reports the innermost string that held the bad `${`."""
    with pytest.raises(InvalidInput, match=r"another \$\. x\$\{$"):
        sub("${UNSET:-x${}")


# ---- whole documents (interpolation/interpolation_test.go, loader/interpolate.go) --------------

def test_values_not_keys_and_paths_in_errors() -> None:
    doc = {"services": {"$FOO": {"image": "img:${FOO}", "ports": ["${P:-80}:80"], "n": 3}}}
    assert interpolate(doc, ENV) == {
        "services": {"$FOO": {"image": "img:first", "ports": ["80:80"], "n": 3}}}
    with pytest.raises(InvalidInput, match=r"^error while interpolating "
                       r"services\.web\.ports\.\[\]: required variable P is missing"):
        interpolate({"services": {"web": {"ports": ["${P?}:80"]}}}, ENV)


def test_typed_keys_are_cast_after_interpolation() -> None:
    env = {"N": "3", "CPUS": "0.5", "RO": "yes", "P": "2"}
    svc = {"deploy": {"replicas": "${N}", "update_config": {"parallelism": "$P"}},
           "cpus": "${CPUS}", "read_only": "${RO}", "init": "false", "pids_limit": "100",
           "healthcheck": {"retries": "${N}"}, "ulimits": {"nofile": {"soft": "1", "hard": "2"},
                                                           "nproc": "64"},
           "ports": [{"target": "${P}0", "published": "8080"}], "image": "${N}"}
    out = interpolate({"services": {"web": svc}, "volumes": {"d": {"external": "true"}}}, env)
    web = out["services"]["web"]
    assert web["deploy"] == {"replicas": 3, "update_config": {"parallelism": 2}}
    assert (web["cpus"], web["read_only"], web["init"], web["pids_limit"]) == (0.5, True, False,
                                                                               100)
    assert web["healthcheck"] == {"retries": 3}
    assert web["ulimits"] == {"nofile": {"soft": 1, "hard": 2}, "nproc": 64}
    assert web["ports"] == [{"target": 20, "published": "8080"}]  # published stays a string
    assert web["image"] == "3"
    assert out["volumes"] == {"d": {"external": True}}
    with pytest.raises(InvalidInput, match=r"^error while interpolating services\.web\.deploy\."
                       r"replicas: failed to cast to expected type: strconv\.Atoi: parsing "
                       r'"many": invalid syntax$'):
        interpolate({"services": {"web": {"deploy": {"replicas": "many"}}}}, env)
    with pytest.raises(InvalidInput, match="invalid boolean: maybe"):
        interpolate({"services": {"web": {"read_only": "maybe"}}}, env)


# ---- .env files (dotenv/parser_test.go, dotenv/godotenv_test.go) ------------------------------

@pytest.mark.parametrize(("line", "key", "value"), [
    # TestParsing
    ("FOO=bar", "FOO", "bar"), ("FOO =bar", "FOO", "bar"), ("FOO= bar", "FOO", "bar"),
    ('FOO="bar"', "FOO", "bar"), ("FOO='bar'", "FOO", "bar"),
    ('FOO="escaped\\"bar"', "FOO", 'escaped"bar'), ('FOO="\\"quoted\\""', "FOO", '"quoted"'),
    ("FOO=\"'d'\"", "FOO", "'d'"), ("OPTION_A: 1", "OPTION_A", "1"),
    ("OPTION_A: Foo=bar", "OPTION_A", "Foo=bar"), ("OPTION_A=1:B", "OPTION_A", "1:B"),
    ("export OPTION_A=2", "OPTION_A", "2"), ("export OPTION_B='\\n'", "OPTION_B", "\\n"),
    ("export exportFoo=2", "exportFoo", "2"), ("exportFOO=2", "exportFOO", "2"),
    ("export_FOO =2", "export_FOO", "2"), ("export.FOO= 2", "export.FOO", "2"),
    ("export\tOPTION_A=2", "OPTION_A", "2"), ("  export OPTION_A=2", "OPTION_A", "2"),
    ('export OPTION_A="export A"', "OPTION_A", "export A"),
    ('FOO="bar\\nbaz"', "FOO", "bar\nbaz"), ("FOO=a\\tb", "FOO", "a\\tb"),
    ('FOO="a\\tb"', "FOO", "a\tb"),
    ('KEY="Z\\aZ\\bZ\\fZ\\nZ\\rZ\\tZ\\vZ\\\\Z\\0123Z"', "KEY", "Z\aZ\bZ\fZ\nZ\rZ\tZ\vZ\\ZSZ"),
    ("FOO.BAR=foobar", "FOO.BAR", "foobar"), ("FOO=foobar=", "FOO", "foobar="),
    ("FOO=bar ", "FOO", "bar"), ("FOO=bar # this is foo", "FOO", "bar"),
    ("FOO=bar #this is foo", "FOO", "bar"), ("FOO=bar #", "FOO", "bar"),
    ("FOO=123#not-an-inline-comment", "FOO", "123#not-an-inline-comment"),
    ('FOO="bar#baz"', "FOO", "bar#baz"), ('FOO="bar#baz"#', "FOO", "bar#baz"),
    ('FOO="bar#baz" # comment', "FOO", "bar#baz"), ("FOO='bar#baz' # comment", "FOO", "bar#baz"),
    ('FOO="bar#baz#bang" # comment', "FOO", "bar#baz#bang"), ('FOO="ba#r"', "FOO", "ba#r"),
    ("FOO='ba#r'", "FOO", "ba#r"),
    ('FOO="bar\\n\\ b\\az"', "FOO", "bar\n\\ b\az"),
    ('FOO="bar\\\\\\n\\ b\\az"', "FOO", "bar\\\n\\ b\az"),
    ('FOO="bar\\\\r\\ b\\az"', "FOO", "bar\\r\\ b\az"),
    ('FOO="bar\\nbaz\\\\"', "FOO", "bar\nbaz\\"),
    ('="value"', "", "value"), (" KEY =value", "KEY", "value"), ("   KEY=value", "KEY", "value"),
    ("\tKEY=value", "KEY", "value"), ('KEY="\\0123"', "KEY", "S"),
    ('KEY="\\x07"', "KEY", "\\x07"), ('KEY="\\u12e4"', "KEY", "\\u12e4"),
    # TestVariableStringValueSeparator: double quotes span lines
    ('URLS="a:3333\nb:443"', "URLS", "a:3333\nb:443"),
    # TestParseBytes: names are letters, digits, _ . - [ ]
    ("a[1]=c", "a[1]", "c"), ("árvíztűrő-TÜKÖRFÚRÓGÉP=x", "árvíztűrő-TÜKÖRFÚRÓGÉP", "x"),
])
def test_dotenv_line(line: str, key: str, value: str) -> None:
    assert parse_dotenv(line) == {key: value}


def test_dotenv_expansion() -> None:
    """TestExpanding, TestExpandingEnvironmentWithLookup, TestSubstitutions*Precedence."""
    assert parse_dotenv("FOO=test\nBAR=$FOO") == {"FOO": "test", "BAR": "test"}
    assert parse_dotenv("FOO=test\nBAR=${FOO}bar")["BAR"] == "testbar"
    assert parse_dotenv("BAR=$FOO") == {"BAR": ""}
    assert parse_dotenv('FOO=test\nBAR="quote $FOO"')["BAR"] == "quote test"
    assert parse_dotenv("BAR='quote $FOO'")["BAR"] == "quote $FOO"
    assert parse_dotenv('FOO="foo\\$BAR"')["FOO"] == "foo$BAR"
    assert parse_dotenv('FOO="foo\\${BAR}"')["FOO"] == "foo${BAR}"
    assert parse_dotenv('FOO=test\nBAR="foo\\${FOO} ${FOO}"')["BAR"] == "foo${FOO} test"
    assert parse_dotenv("TEST=$ME", {"ME": "YES"}) == {"TEST": "YES"}
    subst = ("OPTION_A=1\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\n"
             "OPTION_D=${OPTION_A}_${OPTION_B}\nOPTION_E=${OPTION_NOT_DEFINED}\n")
    # the environment wins over the file's own keys when values are expanded
    assert parse_dotenv(subst, {"OPTION_A": "5"}) == {
        "OPTION_A": "1", "OPTION_B": "5", "OPTION_C": "5", "OPTION_D": "5_5", "OPTION_E": ""}
    assert parse_dotenv("A=${A:-1}\nB=${A}\n", {"A": "5"}) == {"A": "5", "B": "5"}
    assert parse_dotenv("A=${UNSET:-x}${UNSET:+y}\n") == {"A": "x"}


def test_dotenv_quoted_fixture_and_comments() -> None:
    """dotenv/fixtures/quoted.env (TestLoadQuotedEnv), TestLinesToIgnore, TestUTF8BOM."""
    text = ("\ufeffOPTION_A='1'\nOPTION_B='2'\nOPTION_C=''\nOPTION_D='\\n'\nOPTION_E=\"1\"\n"
            "OPTION_F=\"2\"\nOPTION_G=\"\"\nOPTION_H=\"\\n\"\n"
            "OPTION_I = \"echo 'asd'\" # Inline comment\n"
            "OPTION_J = 'first line\nsecond line\nthird line\nand so on'\n"
            "OPTION_K='Let\\'s go!'\nOPTION_Z = \"last value\"\n"
            "\n\r\n\t\t \n# Comment\n\t # comment\n")
    assert parse_dotenv(text) == {
        "OPTION_A": "1", "OPTION_B": "2", "OPTION_C": "", "OPTION_D": "\\n", "OPTION_E": "1",
        "OPTION_F": "2", "OPTION_G": "", "OPTION_H": "\n", "OPTION_I": "echo 'asd'",
        "OPTION_J": "first line\nsecond line\nthird line\nand so on", "OPTION_K": "Let's go!",
        "OPTION_Z": "last value"}


def test_dotenv_inherited_keys() -> None:
    """TestInheritedEnvVariable*: a bare KEY takes the environment's value, or is left out
    (also on the last line without a line break, where compose-go reads an empty key)."""
    env = {"VAR_TO_BE_LOADED_FROM_OS_ENV": "v", "A": "a"}
    assert parse_dotenv("VAR_TO_BE_LOADED_FROM_OS_ENV\nNOT_THERE\nB=1\nA", env) == {
        "VAR_TO_BE_LOADED_FROM_OS_ENV": "v", "B": "1", "A": "a"}
    assert parse_dotenv("G=\nH=\n") == {"G": "", "H": ""}


@pytest.mark.parametrize(("text", "message"), [
    # TestParseVariable, TestParsing's lol$wut
    ("%!(EXTRA string)=foo",
     'line 1: unexpected character "%" in variable name "%!(EXTRA string)=foo"'),
    ("A=1\nlol$wut", 'line 2: unexpected character "$" in variable name "lol$wut"'),
    # TestErrorParsing (fixtures/invalid1.env: a key with a space on line 7)
    ("A=1\nB=2\n\n# c\nC=3\nD=4\nINVALID LINE\nfoo=bar\n", "line 7: key cannot contain a space"),
    # TestUnterminatedQuotes
    ('KEY="', 'unterminated quoted value "'), ('KEY="value', "unterminated quoted value"),
    ('KEY="value\\"', "unterminated quoted value"), ("KEY=\"value'", "unterminated quoted value"),
    ("KEY='", "unterminated quoted value '"), ("KEY='value\\'", "unterminated quoted value"),
    ("KEY='value\"", "unterminated quoted value"),
    # interpolation errors, in compose-go's words
    ("A=${NEED?set it}", "required variable NEED is missing a value: set it"),
    ("A=${", 'Invalid template: "${"'),
])
def test_dotenv_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_dotenv(text)


def test_docker_env_file_is_literal() -> None:
    text = '# c\nA="kept quotes"\nB=x # not a comment\nC\nD\n'
    assert parse_docker_env_file(text, {"C": "shell"}) == {
        "A": '"kept quotes"', "B": "x # not a comment", "C": "shell"}
    with pytest.raises(InvalidInput):
        parse_docker_env_file("BAD KEY=1\n", {})


# ---- the README's rules ---------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
# Each rule the README lists, with a case above that pins it.
RULE_CASES = {
    "$VAR": ("This $FOO var", "This first var"),
    "${VAR}": ("This ${FOO} var", "This first var"),
    "${VAR:-default}": ("ok ${BAR:-def}", "ok def"),
    "${VAR-default}": ("ok ${BAR-def}", "ok "),
    "${VAR:+alt}": ("ok ${BAR:+presence_value}", "ok "),
    "${VAR+alt}": ("ok ${BAR+presence_value}", "ok presence_value"),
    "${VAR:?error}": ("ok ${FOO:?err}", "ok first"),
    "${VAR?error}": ("ok ${BAR?err}", "ok "),
    "$$": ("$${foo}", "${foo}"),
    "${A:-${B} ${C}}": ("ok ${UNSET_VAR-${FOO} ${FOO}}", "ok first first"),
    "${A?need ${B}}": ("${FOO?need ${BAR}}", "first"),
}


def test_readme_rules_are_pinned() -> None:
    text = README.read_text()
    section = text[text.index("### Compose interpolation"):]
    section = section[:section.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `([^`]+)`", section, re.MULTILINE))
    assert listed == set(RULE_CASES), "README's rule table and RULE_CASES differ"
    for rule, (text_in, out) in RULE_CASES.items():
        assert sub(text_in) == out, rule
