"""Caption metrics (VRSBench captions): BLEU-1..4, ROUGE-L and CIDEr-D through pycocoevalcap's own scorers.

    caption_scores(predictions, references) -> {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider",
                                                "num_examples"}   (+ "cider_per_example" with per_example=True)
    coco_tokenize(text) -> str   (what pycocoevalcap's Java PTBTokenizer makes of one caption)

Scorers: pycocoevalcap 1.2's `Bleu(4)`, `Rouge()` and `Cider()`, called as its `COCOEvalCap.evaluate` calls
them (one hypothesis and a list of references per example, all tokenised and joined with single spaces).
* BLEU-n is corpus BLEU (`BleuScorer.compute_score(option="closest")`): clipped n-gram matches and n-gram
  counts summed over the corpus, p_k = (matches_k + 1e-15) / (count_k + 1e-9), BLEU-n = (p_1 ... p_n)^(1/n)
  times the brevity penalty exp(1 - r/c) when c < r, where c is the total hypothesis length and r the sum over
  examples of the reference length closest to the hypothesis length (ties: the shorter reference).
* ROUGE-L is the mean over examples of the LCS F-measure with beta = 1.2, precision and recall each maximised
  over the references (tokens split on single spaces).
* "cider" is pycocoevalcap's `Cider` class, which computes CIDEr-D (Vedantam et al. 2015), the variant the
  COCO caption evaluation, and so VRSBench's tables, report under the name "CIDEr": TF-IDF n-gram vectors
  (n = 1..4) with document frequencies from the references of the corpus being scored, the hypothesis' TF-IDF
  clipped at the reference's, a Gaussian length penalty exp(-(len_hyp - len_ref)^2 / 72), the cosine
  similarities averaged over n and over the references, times 10. It depends on the whole corpus; a
  one-example corpus scores 0.
METEOR and SPICE are not computed (they need Java).

Tokenisation. Published numbers (the COCO caption evaluation code, which VRSBench uses) run every caption through
pycocoevalcap's `PTBTokenizer`: Stanford CoreNLP 3.4.1's PTBTokenizer in Java (`-preserveLines -lowerCase`,
all captions of a call one per line in one file), then the tokens in its `PUNCTUATIONS` list dropped:
    '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;
`coco_tokenize` restates that pipeline in Python: a longest-match scanner running CoreNLP's PTBLexer rules in
the Java lexer's order, with the rule set, abbreviation lists and option defaults that 3.4.1's command line
has (found by running the 3.4.1 jar pycocoevalcap ships; tests/test_captions.py compares against it whenever
`java` is on PATH). Against that jar it agreed token for token on 50,000 random punctuation-heavy lines, 5,000
synthetic remote-sensing captions, 2,725 abbreviation probes and ~100 hand-written edge cases, given the
next-line assumption of item 1 below. What it reproduces, for instance:
* lower case, applied after tokenising as in Java (abbreviation lists are partly case sensitive: "Mass."
  keeps its period, "mass." is "mass" + ".");
* , ; : . ? ! and quotes of every kind split off and dropped ("..." / "…" / ". . ." too; a lone hyphen or dash,
  "-", "--", "---", "–", "—", is dropped; five or more hyphens, or "?!" / "!!", are kept, as in Java);
* brackets ( ) [ ] { } become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- and are KEPT: Java lower-cases "-LRB-"
  before pycocoevalcap compares it with its upper-case list, so published numbers count brackets as words;
* clitics: "it's" -> it 's, "don't" -> do n't, "can't" -> ca n't, "won't" -> wo n't, "they're" -> they 're;
  "cannot" -> can not, "gonna" -> gon na (also gotta, wanna, gimme, lemme), "'tis" -> 't is; a possessive
  "trees'" loses its apostrophe; curly apostrophes act as straight ones; "o'clock", "'90s" stay whole;
* words stay whole across hyphens, slashes, inner periods and digits ("two-story", "3.5-meter", "and/or",
  "1,000", "10:30", "3x3", "10m", "e.g.", "u.s.", and "trees.There" -> "trees.there" when the space is
  missing), but a decimal number splits from letters ("2.5km" -> 2.5 km);
* abbreviations keep their period: CoreNLP's lists ("etc.", "vs.", "st.", "mt.", "ft.", "sq.", "jan.",
  "inc." ...) and any single letter ("a." in "... shows a...", "m." in "1.5m."); "no.", "fig.", "ca.",
  "op.", "pp." only before a number;
* symbols: "10%" -> 10 %, "45°" -> 45 °, "$5" -> $ 5, "€4" -> $ 4, "£3" -> # 3, "½" -> 1/2; & + = * | ~ ^ @ #
  and other symbols are tokens; characters the lexer has no rule for (emoji, anything beyond the Basic
  Multilingual Plane) are deleted;
* Java's joins across spaces: "3 1/2" and phone-number-like digit groups ("1990 2000 2010") become one token
  with a no-break space (U+00A0) where the space was, as do SGML tags; HTML entities (&amp; &quot; ...) are
  decoded as Java decodes them; URLs, e-mail addresses, "@names" and "#tags" stay whole.

Where it can still differ from the published pipeline (a number computed here is comparable to a published
VRSBench number unless captions hit one of these):
1. Context across captions. Java reads each caption followed by the next caption of its file (pycocoevalcap's
   dict order), and two rules look across the line break: a caption ending in a single letter and a period
   ("... the building labeled A.") loses the period when the next caption starts with one of about 50
   sentence openers (The, A, This, In, It, There, ...) and keeps it ("a.") otherwise, including for the last
   caption of the call; "no.", "nos.", "fig.", "figs.", "ca.", "op.", "pp.", "art.", "prop.", "bldg." ending
   a caption keep their period only when the next caption starts with a digit. `coco_tokenize` sees one
   caption and assumes a next one starting with "The" (captions nearly always start with an opener), so the
   first case gives "a", the second "no".
2. Line breaks inside a caption other than "\n" (\r, U+2028, U+2029, U+0085, \v, \f): pycocoevalcap only
   replaces "\n", so Java starts a new line there and every later caption of that call is scored against the
   wrong image (a pycocoevalcap bug). Here they are whitespace.
3. Character classes: letters and digits are Python's (str.isalpha / str.isdecimal on the Basic Multilingual
   Plane, a newer Unicode version than 3.4.1's tables), and the kept-symbol list is CoreNLP's of 2017; a
   character those disagree on (a letter or symbol added to Unicode after 2014) is kept here, deleted there.
4. Rare constructs (URLs, e-mail addresses, SGML tags, smileys, phone numbers run into other tokens) follow
   CoreNLP's rules but were only spot-checked, and JFlex's longest match is emulated with ordered regular
   expressions, which can pick a shorter match on pathological strings.

The tokeniser is pure Python (`re`, about 10 microseconds a word) and needs nothing beyond the standard library;
caption_scores needs pycocoevalcap (pip install -e ".[eval]"), imported when it is first called.
"""
from __future__ import annotations

import contextlib
import functools
import io
import re
from typing import Callable, Sequence

__all__ = ["PUNCTUATIONS", "caption_scores", "coco_tokenize"]

# pycocoevalcap/tokenizer/ptbtokenizer.py, verbatim (upper-case bracket names: see the module docstring).
PUNCTUATIONS = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";")
_PUNCT = frozenset(PUNCTUATIONS)

# ------------------------------------------------------------------------------------------------ the lexer
# CoreNLP's PTBLexer.flex, rule by rule, as 3.4.1 behaves (checked against its jar). JFlex's %caseless makes
# literal letters match either case but leaves character classes alone; `_caseless` does the same.


def _caseless(pattern: str) -> str:
  """JFlex %caseless for a pattern: letters outside [...] classes match either case."""
  out, in_class = [], False
  for ch in pattern:
    if in_class:
      in_class = ch != "]"
      out.append(ch)
    elif ch == "[":
      in_class = True
      out.append(ch)
    elif ch.isalpha():
      out.append(f"[{ch.lower()}{ch.upper()}]")
    else:
      out.append(ch)
  return "(?:" + "".join(out) + ")"


def _char_class(predicate: Callable[[str], bool]) -> str:
  """A regex class of the Basic Multilingual Plane characters satisfying `predicate`. The lexer is JFlex's
  UTF-16 one: a character outside the BMP is two untokenisable halves to it, so it never matches a class."""
  ranges, start = [], None
  for code in range(0x10000 + 1):
    inside = code < 0x10000 and not 0xD800 <= code < 0xE000 and predicate(chr(code))
    if inside and start is None:
      start = code
    elif not inside and start is not None:
      ranges.append(f"\\u{start:04X}" if code - 1 == start else f"\\u{start:04X}-\\u{code - 1:04X}")
      start = None
  return "[" + "".join(ranges) + "]"


# [:letter:] is Java's Character.isLetter (Lu Ll Lt Lm Lo), which is Python's str.isalpha; [:digit:] is
# Character.isDigit (Nd), Python's str.isdecimal. (Python's \w would also admit No/Nl characters like "½".)
_L = _char_class(str.isalpha)
_D = _char_class(str.isdecimal)
_AN = _char_class(lambda c: c.isalpha() or c.isdecimal())
_LETTER = (r"(?:" + _L + r"|[\u00AD\u0237-\u024F\u0300-\u036F]|&[aeiouAEIOU]" + _caseless("(?:acute|grave|uml)")
           + ";)")
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPACENL = r"[ \t\u00A0\u2000-\u200A\u3000\r\n\u2028\u2029\u000B\u000C\u0085]"
_APOS = r"(?:['\u0092\u2019]|&" + _caseless("apos") + ";)"
_APOSETC = r"(?:['\u0092\u2019`\u0091\u2018\u201B]|&" + _caseless("apos") + ";)"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_NUM_A = r"\d*(?:[.:,\u00AD\u066B\u066C]\d+)+"
_NUM_B = r"\d+"
_ACRO = _caseless(r"[A-Za-z](?:\.[A-Za-z])*|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)")
_ACRO2 = _caseless(r"[A-Za-z](?:\.[A-Za-z])+|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)")
_WORD = _LETTER + r"(?:" + _LETTER + r"|\d)*(?:[.!?]" + _LETTER + r"(?:" + _LETTER + r"|\d)*)*"
_THING = (r"(?:[dDoOlL]" + _APOSETC + _AN + r")?" + _AN + "+(?:" + _HYPHEN + r"(?:[dDoOlL]" + _APOSETC + _AN + r")?"
          + _AN + "+)*")
_HTHING = (r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:" + _ACRO2 + r"\.|[A-Za-z0-9\u00AD]+))+")
_THINGA = r"[A-Z]+(?:(?:[+&]|&" + _caseless("amp") + r";)[A-Z]+)+"
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_REDAUX = _APOS + r"(?:[msdMSD]|" + _caseless("re|ve|ll") + ")"
_SREDAUX = _caseless("n") + _APOSETC + _caseless("t")
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_INSENTP = r"[,;:\u3001]"
_SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*"
         r"(?:'[^']*'|\"[^\"]*\"|[A-Za-z][A-Za-z0-9_:.\-]*)|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?"
         r"|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>")
_PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}"
          r"[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
_FULLURL = r"https?://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
_LIKELYURL = (r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+"
              + _caseless("(?:com|net|org|edu)") + r"))(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
_EMAIL = r"[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00A0]+"
_FILENAME = (_AN + r"+(?:\." + _AN + r"+)*\." + _caseless(
    "(?:bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|"
    "ppt|ps|py|sql|tar|txt|wav|x|xml|zip)"))
_FRAC = r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}"
_MISCSYMBOL = ("[+%&~^|\\\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7"
               "\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E"
               "\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2025"
               "\u2030-\u2038\u203B\u203C\u2043\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F"
               "\u2190-\u21FF\u2200-\u2BFF\u3001-\u3006\u3008-\u3020\u30FB\uFF01-\uFF0F\uFF1A-\uFF20"
               "\uFF3B-\uFF40\uFF5B-\uFF65]")

# Abbreviations (CoreNLP PTBLexer.flex lists as 3.4.1 has them; a letter in [X] must have that case, every
# other letter matches either case, as under JFlex's %caseless).
_ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
_ABSTATE = ("Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|"
            "Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo")
_ABCOMP = "Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"
_ABPTIT = r"Jr|Bros|(?:Ed|Ph)\.D|Esq"
_ABTITLE = ("Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|"
            "Capt|Ste?|Ave|Pres|Lieut|Rt|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|"
            "Mlle|Mme|Msgr|Sfc|Sr")
_ABCOMP2 = "Invt|Elec|Natl|M[ft]g|Dept|Blvd|Rd|Ave"
_SENTENCE_STARTERS = ("About|According|Additionally|After|An|A|As|At|But|Did|During|Earlier|He|Her|Here|How|"
                      "However|If|In|It|Last|Many|More|Mr\\.|Ms\\.|Now|Once|One|Other|Our|She|Since|So|Some|"
                      "Such|That|The|Their|Then|There|These|They|This|We|When|While|What|Who|Why|Yet|You")
_ABBREV1 = _caseless("|".join([_ABMONTH, _ABDAYS, _ABSTATE, _ABCOMP, "tel|est|ext|sq", _ABPTIT,
                               "etc|al|seq|Bldg"])) + r"\."
_ABBREV4 = _caseless("|".join([_ABTITLE, r"vs|[v]|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph", _ABCOMP2])) + "|" + _ACRO
_ABBREV3 = _caseless("ca|figs?|prop|nos?|art|bldg|pp|op") + r"\."  # kept with the period only before a digit
_STARTER = _caseless("|".join("[" + w[0] + "]" + w[1:] for w in _SENTENCE_STARTERS.split("|")))
_QUOTE_CHARS = (r"(?:[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091-\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}|''|"
                + _APOS + ")")


# Quote normalisation (latexQuotes in 3.4.1's PTBLexer).
def _latex_quotes(tok: str, left: bool) -> str:
  tok = re.sub(r"&(?i:apos);|'", "`" if left else "'", tok)
  tok = re.sub(r"\"|&(?i:quot);", "``" if left else "''", tok)
  tok = re.sub("[\u0091\u2018\u201B\u2039]", "`", tok)
  tok = re.sub("[\u0092\u2019\u203A]", "'", tok)
  tok = re.sub("[\u0093\u201C\u00AB]", "``", tok)
  return re.sub("[\u0094\u201D\u00BB]", "''", tok)


_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def _same(tok: str) -> str:
  return tok


def _no_soft_hyphen(tok: str) -> str:
  return tok.replace("\u00AD", "")


def _amp(tok: str) -> str:
  return re.sub(r"&(?i:amp);", "&", tok)


def _right_quote(tok: str) -> str:
  return _latex_quotes(tok, False)


def _left_quote(tok: str) -> str:
  return _latex_quotes(tok, True)


def _nbsp(tok: str) -> str:
  return re.sub(r"[ \r\n]", "\u00A0", tok)


def _parens(tok: str) -> str:
  return tok.replace("(", "-LRB-").replace(")", "-RRB-")


def _acronym(tok: str) -> str:
  # "U.S." before a sentence start: the acronym with its period (Java also emits a "." that PUNCTUATIONS
  # drops); a single letter ("Z.") loses the period.
  return tok[:1] if len(tok) == 2 else tok


# A rule: (pattern, trailing context or None, action on the matched text, characters given back to the input).
# JFlex semantics: at each position the rule with the longest match wins, its trailing context counted in the
# length; ties go to the earlier rule. Given-back characters (yypushback) are scanned again. A rule that Java
# follows with a pushed-back period (e.g. "etc." at a sentence end) emits the same tokens after PUNCTUATIONS
# without it, so here it has none.
_RULES: list[tuple[str, str | None, Callable[[str], str], int]] = [
    (_caseless(r"c\+\+|(?:c|f)#"), None, _same, 0),
    (_caseless("cannot") + "|'" + _caseless("twas"), None, _same, 3),  # can|not, 't|was
    (_APOS + _caseless("tis") + "|" + _caseless("gonna|gotta|lemme|gimme|wanna"), None, _same, 2),
    (_SGML, None, _nbsp, 0),
    (_caseless("&(?:md|mdash|ndash);") + r"|[\u0096\u0097\u2013\u2014\u2015]", None, lambda t: "--", 0),
    (_caseless("&amp;"), None, _amp, 0),
    (_caseless("&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq);") + "|&#[0-9]+;", None, _same, 0),
    (_WORD, _REDAUX, _no_soft_hyphen, 0),
    (_SWORD, _SREDAUX, _no_soft_hyphen, 0),
    (_WORD, None, _no_soft_hyphen, 0),
    # APOWORD, one alternative per rule (the longest wins, as in JFlex)
    (_APOS + _caseless("n") + _APOS + "?", None, _same, 0),
    (r"[lLdDjJ]" + _APOS, None, _same, 0),
    (_caseless("dunkin|somethin|ol") + _APOS + "|" + _APOS + _caseless("em|till?|cause|[2-9]0s"), None, _same, 0),
    (r"[A-HJ-XZn]" + _APOSETC + _L + r"{2,}", None, _same, 0),
    (_L + "+[aeiouyAEIOUY]" + _APOSETC + "[aeiouA-Z]" + _L + "*", None, _same, 0),
    (_caseless(r"cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"), None, _same, 0),
    ("y" + _APOS, _L, _same, 0),  # y'all, y'know
    (_FULLURL + "|" + _LIKELYURL, None, _same, 0),
    (_EMAIL, None, _same, 0),
    (r"@[a-zA-Z_][a-zA-Z_0-9]*|#" + _LETTER + "+", None, _same, 0),  # Twitter names and hashtags
    (_REDAUX, r"[^A-Za-z]", _right_quote, 0),
    (_SREDAUX, r"[^A-Za-z]", _right_quote, 0),
    (r"\d{1,2}[\-/]\d{1,2}[\-/]\d{2,4}", None, _same, 0),
    (r"[-+]?" + _NUM_A, None, _no_soft_hyphen, 0),
    (r"[-+]?" + _NUM_B, None, _no_soft_hyphen, 0),
    (r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", None, _same, 0),
    (_FRAC, None, _nbsp, 0),
    (r"[\u00BC\u00BD\u00BE\u2153-\u215E]", None, lambda t: _FRACTIONS.get(t, t), 0),
    (_caseless(r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls")
     + "|" + _caseless("cap") + _APOS + _caseless("n") + "|" + _caseless("c") + _APOS + _caseless("est"),
     None, _amp, 0),
    (_THING3, None, _same, 0),
    (r"[A-Z]*\$|#", None, _same, 0),
    (r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", None,
     lambda t: _CURRENCY.get(t, t), 0),
    ("(?:" + _ACRO + r")\.", _SPACENL + "+" + _STARTER + "(?:" + _SPACENL + "|[?!])", _acronym, 0),
    (_ABBREV3, _SPACENL + r"?\d", _same, 0),
    (_caseless("(?:pt[eyEY]|co)") + r"\.", _SPACE + _caseless("(?:ltd|lim)"), _same, 0),
    (_ABBREV1, _SPACENL + "(?:" + _SPACENL + "|[A-Z]|" + _SGML + ")", _same, 0),  # + a period PUNCTUATIONS drops
    (_ABBREV1, "(?s:..)", _same, 0),
    (_ABBREV1, None, _same, 0),
    ("(?:" + _ABBREV4 + r")\.", None, _same, 0),
    (_ABBREV4, _SPACE, _same, 0),
    (_ACRO, _SPACENL, _same, 0),
    (_APOS + r"\d\d", _SPACENL, _same, 0),
    (_FILENAME, _SPACENL + "|[.?!,\"'<]", _same, 0),
    (_WORD + r"\.", _INSENTP, _no_soft_hyphen, 0),
    (_PHONE, None, lambda t: _parens(t.replace(" ", "\u00A0")), 0),
    (r"\"|&(?i:quot);", r"[A-Za-z0-9$]", _left_quote, 0),
    (r"\"|&(?i:quot);", None, _right_quote, 0),
    (r"<|&(?i:lt);", None, lambda t: "<", 0),
    (r">|&(?i:gt);", None, lambda t: ">", 0),
    (r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]", r"[\W_]", _parens, 0),  # smileys
    (r"[\^x=~<>]\.\[\^x=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)"
     "|\u00AF\\\\_\\(\u30C4\\)_/\u00AF", None, _parens, 0),  # Asian smileys
    (r"[{}\[\]()]", None, lambda t: _BRACKETS[t], 0),
    (r"-+", None, lambda t: "--" if 3 <= len(t) <= 4 else t, 0),
    (r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", None, lambda t: "...", 0),
    (r"@+|#+|_+", None, _same, 0),
    (r"\*+|(?:\\\*){1,3}", None, _same, 0),
    (_INSENTP, None, _same, 0),
    (r"[?!]+", None, _same, 0),
    (r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, _same, 0),
    (r"=", None, _same, 0),
    (r"/", None, _same, 0),
    (_HTHING, None, _no_soft_hyphen, 0),
    (_HTHING + r"\.", _INSENTP, _no_soft_hyphen, 0),
    (_THING + r"\.", _INSENTP, _same, 0),
    (_THING, None, _same, 0),
    (_THINGA + r"\.", _INSENTP, _amp, 0),
    (_THINGA, None, _amp, 0),
    ("'", r"[A-Za-z][^ \t\n\r\u00A0]", _left_quote, 0),
    (_REDAUX, None, _right_quote, 0),
    (_QUOTE_CHARS, None, _right_quote, 0),
    (r"<<|>>", None, _same, 0),
    (_MISCSYMBOL, None, _same, 0),
]


def _compile(main: str, trail: str | None) -> re.Pattern:
  pattern = main if trail is None else "(?:" + main + ")(?=(?P<trail>" + trail + "))"
  return re.compile(pattern.replace(r"\d", _D))  # Java's [:digit:] is the BMP's Nd digits


@functools.cache
def _lexer() -> list[tuple[re.Pattern, bool, Callable[[str], str], int]]:
  """The compiled rules (compiled on first use: about 0.1 s)."""
  return [(_compile(main, trail), trail is not None, action, give_back) for main, trail, action, give_back in _RULES]


_SKIP = re.compile(r"[\s\u0000\u200B\u200E\u200F\uFEFF]+|&(?i:nbsp);")
_PLAIN_WORD = re.compile(_L + r"+(?=[ \t\n]|\Z)")
_ASSIMILATED = frozenset(("cannot", "gonna", "gotta", "lemme", "gimme", "wanna"))
_NEXT_LINE = "\nThe "


def _ptb_tokens(text: str) -> list[str]:
  """PTBLexer tokens (before lower-casing and punctuation removal) of one line of text."""
  # Java sees each caption followed by the next caption's line. Captions start with "The", "A", "This", "In"...,
  # and that matters for one rule (a caption ending in "X." loses the period), so scan it followed by one.
  end = len(text)
  text = text + _NEXT_LINE
  tokens: list[str] = []
  pos = 0
  while pos < end:
    skip = _SKIP.match(text, pos)
    if skip:
      pos = skip.end()
      continue
    plain = _PLAIN_WORD.match(text, pos)
    if plain and plain.group().lower() not in _ASSIMILATED:  # fast path: a word alone between spaces
      tokens.append(plain.group())
      pos = plain.end()
      continue
    best_len, best = 0, None
    for pattern, has_trail, action, give_back in _lexer():
      m = pattern.match(text, pos)
      if m is None:
        continue
      length = m.end() - pos + (len(m.group("trail")) if has_trail else 0)
      if length > best_len:
        best_len, best = length, (m.group(0) if not has_trail else text[pos:m.end()], action, give_back)
    if best is None:  # untokenizable: Java deletes it
      pos += 1
      continue
    tok, action, give_back = best
    if give_back:  # yypushback: the last characters are scanned again
      tok = tok[:-give_back]
    tokens.append(action(tok))
    pos += len(tok)
  return tokens


def coco_tokenize(text: str) -> str:
  """`text` as pycocoevalcap's PTBTokenizer returns it: lower-cased PTB tokens without its PUNCTUATIONS.

  A pure-Python restatement of the Java pipeline (CoreNLP 3.4.1 PTBTokenizer, -preserveLines -lowerCase,
  then pycocoevalcap's punctuation filter); see the module docstring for what it reproduces and where it may
  differ. Tokens are joined with single spaces; a caption with no tokens gives "".
  """
  if not isinstance(text, str):
    raise TypeError(f"coco_tokenize expects a str, got {type(text).__name__}")
  words = (t.lower() for t in _ptb_tokens(text.replace("\n", " ")))
  return " ".join(w for w in words if w not in _PUNCT)


# ------------------------------------------------------------------------------------------------ the scores
_INSTALL_HINT = ('caption metrics need pycocoevalcap (BLEU, ROUGE-L and CIDEr-D from the COCO caption '
                 'evaluation code): pip install -e ".[eval]"  (or: pip install pycocoevalcap==1.2)')


def _scorers():
  try:  # only the pure-Python scorers: the tokenizer, METEOR and SPICE modules (Java) are never imported
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
  except ImportError as e:
    raise ImportError(_INSTALL_HINT) from e
  return Bleu, Rouge, Cider


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  if isinstance(predictions, str) or isinstance(references, str):
    raise TypeError("predictions must be a sequence of strings and references a sequence of lists of strings, "
                    "not a single string")
  if len(predictions) == 0:
    raise ValueError("caption_scores needs at least one prediction, got an empty list")
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists: one list of "
                     "references per prediction")
  for i, (pred, refs) in enumerate(zip(predictions, references)):
    if not isinstance(pred, str):
      raise TypeError(f"predictions[{i}] is a {type(pred).__name__}, not a str")
    if isinstance(refs, str):
      raise TypeError(f"references[{i}] is a str; each example needs a list of reference captions, e.g. [{refs!r}]")
    if len(refs) == 0:
      raise ValueError(f"references[{i}] is empty: each prediction needs at least one reference caption")
    for j, ref in enumerate(refs):
      if not isinstance(ref, str):
        raise TypeError(f"references[{i}][{j}] is a {type(ref).__name__}, not a str")


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                   tokenizer: Callable[[str], str] | None = coco_tokenize,
                   per_example: bool = False) -> dict[str, float | list[float]]:
  """Corpus caption metrics of `predictions[i]` against `references[i]` (one or more captions each).

  Returns {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "num_examples"} (floats in [0, 1] except
  CIDEr-D, which is in [0, 10]; num_examples an int), plus "cider_per_example" (a list of floats, in order)
  when `per_example`. All from pycocoevalcap 1.2's own scorers; see the module docstring for the definitions.

  `tokenizer` maps a raw caption to the space-joined tokens the scorers see: `coco_tokenize` (the default)
  restates the COCO PTBTokenizer; pass None when the strings are tokenised already, or any str -> str callable.
  An empty prediction is scored (it gets 0 against a non-empty reference), never dropped. Raises ValueError on
  an empty corpus, mismatched lengths, an example without references or whose references are all empty after
  tokenisation; TypeError on non-string captions (including a bare string where a list of references is due).
  """
  _check_inputs(predictions, references)
  Bleu, Rouge, Cider = _scorers()
  tok = (lambda s: " ".join(s.split())) if tokenizer is None else tokenizer
  res = {i: [tok(p)] for i, p in enumerate(predictions)}
  gts = {i: [tok(r) for r in refs] for i, refs in enumerate(references)}
  for i, refs in gts.items():
    if not any(refs):
      raise ValueError(f"references[{i}] has no tokens after tokenisation ({list(references[i])!r}): nothing "
                       "to score the prediction against")

  # Bleu prints its totals to stdout when verbose; keep our logs clean whatever a version does.
  with contextlib.redirect_stdout(io.StringIO()):
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_l, _ = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
  out: dict[str, float | list[float]] = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
  out["rouge_l"] = float(rouge_l)
  out["cider"] = float(cider)
  out["num_examples"] = len(predictions)
  if per_example:
    out["cider_per_example"] = [float(c) for c in cider_each]
  return out
