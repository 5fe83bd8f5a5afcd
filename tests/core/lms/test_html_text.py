"""The text part made from IOMAD's HTML bodies: the quick pass reads a body of plain tags as the
full parser does, and leaves every other body to it."""
from __future__ import annotations

import random

from core.lms.html_text import _joined, _quick, _Text, html_to_text

PIECES = ["<p>", "</p>", "<P>", "</P >", "<br>", "<br/>", "<BR />", "<div class='x'>", "</div>", "<li>", "</li>",
          "<ul>", "</ul>", "<b>", "</b>", "<h2 id=\"t\">", "</h2>", "<table>", "<tr>", "</tr>", "<td>", "</td>",
          '<a href="https://lms.test/x?a=1&amp;b=2">', "<a HREF='mailto:a@b.test'>", '<a href="/rel">', "<a>",
          '<a href="ftp://x" href="https://last.test">', '<a title="t" href = "http://s.test/">', "</a>",
          '<img src="x.png" alt="y"/>', "<hr>", "<head>", "</head>", "<span data-x=\"1\" hidden>", "</span>",
          "Hi ", "Ann", " \t\n ", "  ", "&amp;", "&lt;b&gt;", "&nbsp;", "&#39;", "&#x41;", "&copy", "&bogus;", " & ",
          "a > b", "王 李 Łódź ễ", "مرحبا", "\r\n", "end.",
          # what the quick pass leaves to the parser
          "<!-- c -->", "<!DOCTYPE html>", "<?php ?>", "<style>p{}</style>", "<script>x<y</script>", "a < b",
          "<a href=bare>", "<o:p>", "</p class='x'>", "<p", "<", "<title>T</title>"]


def parsed(body: str) -> list[str]:
    parser = _Text()
    parser.feed(body)
    parser.close()
    return parser.out


def test_the_quick_pass_reads_what_the_parser_reads():
    rng = random.Random(23)
    quick = 0
    for _ in range(4000):
        body = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))
        found = _quick(body)
        if found is not None:
            quick += 1
            assert "".join(found) == "".join(parsed(body)), body
    assert quick > 400  # the generator gives it bodies it reads, not only ones it leaves


def test_bodies_the_quick_pass_leaves_to_the_parser():
    for body in ("<!-- c --><p>x</p>", "<style>p{}</style>x", "a < b", "<a href=bare>x</a>", "<p", "<o:p>x</o:p>",
                 "</p class='x'>", "<script>if (a<b) {}</script>"):
        assert _quick(body) is None, body
        assert html_to_text(body) == _joined(parsed(body))
    assert html_to_text("<p>a</p><!-- gone --><p>b &amp; c</p>") == "a\n\nb & c\n"
