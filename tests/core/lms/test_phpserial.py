"""The reader of IOMAD's ``email.headers`` against real PHP: the headers
``queue_for_cron`` builds, serialised by PHP's own ``serialize()`` (php-cli,
installed by ``scripts/test-setup.sh``), decode to what PHP put in; and the
tests' writer (``tests.support.phpserialize``) writes PHP's bytes exactly."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from core.lms.phpserial import PhpSerialError, loads
from tests.support.phpserialize import PhpObject, dumps

PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="php-cli is not installed (scripts/test-setup.sh installs it "
                                                   "with apt where apt is available)")

#: headers as queue_for_cron builds them: the attachment object, To/Cc/reply-to lines, the template object
#: as get_record returned it (strings, nulls) after queue_for_cron's normalisation (ints 0, empty strings)
HEADERS_PHP = r"""
$attachment = new stdClass();
$attachment->filepath = '/var/moodledata/filedir/3f/a2/3fa2' . str_repeat('0', 36);
$attachment->filename = 'Zertifikat – Łódź.pdf';
$template = new stdClass();
foreach (['id' => '12', 'companyid' => '5', 'name' => 'user_create', 'lang' => 'zh_cn',
          'subject' => '欢迎 {User_FirstName}', 'body' => "<p>\"Ngày mới\"; {a:1} }\n</p>", 'signature' => null,
          'disabled' => '0', 'disabledmanager' => '1', 'disabledsupervisor' => '0', 'emailto' => '101,102',
          'emailtoother' => null, 'emailcc' => '', 'emailccother' => 'boss@acme.test',
          'emailfrom' => null, 'emailfromother' => null, 'emailreplyto' => null,
          'emailreplytoother' => 'help@acme.test', 'repeatperiod' => '0', 'repeatvalue' => '0',
          'repeatday' => '0', 'emailfromothername' => '{Company_Name}'] as $k => $v) {
    $template->$k = $v;
}
foreach (['signature' => '', 'emailtoother' => '', 'emailcc' => '', 'disabled' => 0, 'disabledsupervisor' => 0,
          'repeatperiod' => 0, 'repeatvalue' => 0, 'repeatday' => 0, 'emailfrom' => '', 'emailfromother' => '']
         as $k => $v) {
    if (empty($template->$k)) { $template->$k = $v; }
}
$headers = [];
$headers['attachment'] = $attachment;
$headers[] = 'To:learner101@acme.test';
$headers[] = 'Cc:boss@acme.test';
$headers[] = 'reply-to:help@acme.test';
$headers['template'] = $template;
$headers['flags'] = [true, false, null, -42, 'ễ'];
echo serialize($headers);
"""


def expected_headers() -> dict:
    template = PhpObject([
        ("id", "12"), ("companyid", "5"), ("name", "user_create"), ("lang", "zh_cn"),
        ("subject", "欢迎 {User_FirstName}"), ("body", '<p>"Ngày mới"; {a:1} }\n</p>'), ("signature", ""),
        ("disabled", 0), ("disabledmanager", "1"), ("disabledsupervisor", 0), ("emailto", "101,102"),
        ("emailtoother", ""), ("emailcc", ""), ("emailccother", "boss@acme.test"), ("emailfrom", ""),
        ("emailfromother", ""), ("emailreplyto", None), ("emailreplytoother", "help@acme.test"),
        ("repeatperiod", 0), ("repeatvalue", 0), ("repeatday", 0), ("emailfromothername", "{Company_Name}")])
    return {"attachment": PhpObject(filepath="/var/moodledata/filedir/3f/a2/3fa2" + "0" * 36,
                                    filename="Zertifikat – Łódź.pdf"),
            0: "To:learner101@acme.test", 1: "Cc:boss@acme.test", 2: "reply-to:help@acme.test",
            "template": template, "flags": [True, False, None, -42, "ễ"]}


def php(code: str) -> bytes:
    return subprocess.run([PHP, "-n", "-r", code], check=True, capture_output=True, timeout=30).stdout


@needs_php
def test_iomad_headers_from_real_php_decode_and_our_writer_matches_byte_for_byte():
    raw = php(HEADERS_PHP)
    decoded = loads(raw)
    expected = expected_headers()
    flags = expected.pop("flags")
    assert decoded.pop("flags") == dict(enumerate(flags))
    assert decoded == expected
    assert list(decoded["template"]) == list(expected["template"])  # property order as PHP keeps it
    expected["flags"] = flags
    assert dumps(expected).encode("utf-8") == raw


@needs_php
def test_real_php_edge_values():
    cases = {"empty": "", "quote": 'a";s:1:"b', "braces": "}{", "nul": "a\x00b", "newline": "x\r\ny",
             "cjk": "王李", "emoji": "🎓", "big": 2**62, "neg": -1, "nested": {"a": {"b": {"c": [1, 2]}}}}
    raw = php(f"echo serialize(json_decode({json.dumps(json.dumps(cases))}, true));")
    assert loads(raw) == {k: (_as_php_array(v)) for k, v in cases.items()}
    assert dumps(cases).encode() == raw
    # a protected property keeps PHP's "\0*\0" key; nothing is instantiated
    obj = loads(php('class T { protected $p = "x"; public $q = 1; } echo serialize(new T());'))
    assert obj == {"\x00*\x00p": "x", "q": 1}


def _as_php_array(value):
    if isinstance(value, dict):
        return {k: _as_php_array(v) for k, v in value.items()}
    if isinstance(value, list):
        return dict(enumerate(value))
    return value


@pytest.mark.parametrize("raw, reason", [
    ('a:1:{s:3:"abc', "bad string"),
    ('a:2:{i:0;', "truncated value"),
    ('s:5:"abc";', "bad string"),
    ('i:1;i:2;', "trailing data after the value"),
    ('r:1;', "unknown type"),
    ('C:3:"Foo":0:{}', "unknown type"),
    ('a:1:{a:0:{}i:1;}', "bad array key"),
    ('s:2:"\xff\xfe";', "a string is not UTF-8"),
    ("a:1:{i:0;" * 20 + "N;" + "}" * 20, "nested too deeply"),
])
def test_what_is_not_php_data_is_refused(raw, reason):
    with pytest.raises(PhpSerialError, match=reason):
        loads(raw.encode("latin-1") if "\xff" in raw else raw)
