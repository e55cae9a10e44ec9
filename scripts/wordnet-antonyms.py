#!/usr/bin/env python3
"""Writes assets/lexicon/antonyms.txt: the direct antonyms of WordNet 3.0
(adjectives, verbs and adverbs; one-word lemmas), one pair per line, and the
irregular forms of their words ("worse -> bad"), for the negation guard ("Is
coffee good for you?" / "bad for you?").

Reads the WordNet database of Debian's `wordnet-base` package
(/usr/share/wordnet). The gateway needs only the file written here, which is
committed; run this again (`apt-get install wordnet-base`) to rebuild it:

    scripts/wordnet-antonyms.py > assets/lexicon/antonyms.txt

Nouns are left out: WordNet pairs nouns by relation (question / answer,
parent / child) as often as by opposition. Quantifiers (all / some) are left
out: they say how much is asked about, not what.
"""

import sys

WORDNET = "/usr/share/wordnet"
PARTS = {"adj": "as", "verb": "v", "adv": "r"}
QUANTIFIERS = {"all", "some", "any", "none", "every", "each", "both", "either", "neither"}

LICENCE = """\
# Antonym pairs from WordNet 3.0, written by scripts/wordnet-antonyms.py.
# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
# THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY
# MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF
# EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS
# OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR
# THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
# INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
# The name of Princeton University or Princeton may not be used in
# advertising or publicity pertaining to distribution of the software and/or
# database. Title to copyright in this software, database and any associated
# documentation shall at all times remain with Princeton University and
# LICENSEE agrees to preserve same.
# (Full licence: https://wordnet.princeton.edu/license-and-commercial-use)
"""


def synsets(part):
    """offset -> (lemmas, [(pointer, target offset, target part, source/target)])"""
    out = {}
    with open(f"{WORDNET}/data.{part}", encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split()
            count = int(fields[3], 16)
            lemmas = [fields[4 + 2 * k].lower().split("(")[0] for k in range(count)]
            i = 4 + 2 * count
            pointers = []
            for _ in range(int(fields[i])):
                sym, target, tpart, st = fields[i + 1 : i + 5]
                pointers.append((sym, target, tpart, st))
                i += 4
            out[fields[0]] = (lemmas, pointers)
    return out


VOWELS = "aeiou"


def regular_forms(word, part):
    """The regular inflections of a verb (-s, -ed, -ing) or an adjective
    (-er, -est), spelled by the usual rules; a form no one writes is only a
    key no text holds."""
    cvc = (
        len(word) >= 3
        and word[-1] not in VOWELS + "wxy"
        and word[-2] in VOWELS
        and word[-3] not in VOWELS
        and sum(c in VOWELS for c in word) == 1
    )
    if word.endswith("e"):
        stem, double = word[:-1], word[:-1]
    elif word.endswith("y") and len(word) > 2 and word[-2] not in VOWELS:
        stem, double = word[:-1] + "i", word[:-1] + "i"
    else:
        stem, double = word, word + word[-1] if cvc else word
    if part == "verb":
        s_form = word + "es" if word.endswith(("s", "x", "z", "ch", "sh")) else (
            stem + "es" if stem.endswith("i") else word + "s")
        ing = (word[:-1] if word.endswith("e") and not word.endswith("ee") else
               (word + word[-1] if cvc else word)) + "ing"
        return [s_form, double + "ed", ing]
    if part == "adj":
        return [double + "er", double + "est"]
    return []


def parts_of(pairs):
    """The words of `pairs` by part of speech: verb or adj."""
    words = {w for pair in pairs for w in pair}
    out = {"verb": set(), "adj": set()}
    for part in out:
        with open(f"{WORDNET}/index.{part}", encoding="latin-1") as f:
            for line in f:
                lemma = line.split(" ", 1)[0]
                if not line.startswith(" ") and lemma in words:
                    out[part].add(lemma)
    return out


def main():
    pairs = set()
    for part, letters in PARTS.items():
        data = synsets(part)
        for lemmas, pointers in data.values():
            for sym, target, tpart, st in pointers:
                if sym != "!" or tpart not in letters or target not in data:
                    continue
                source, dest = int(st[:2], 16), int(st[2:], 16)
                if not source or not dest:
                    continue
                a, b = lemmas[source - 1], data[target][0][dest - 1]
                if "_" in a or "_" in b or "-" in a or "-" in b or a == b:
                    continue
                if a in QUANTIFIERS or b in QUANTIFIERS:
                    continue
                pairs.add(tuple(sorted((a, b))))
    words = {w for pair in pairs for w in pair}
    forms = set()
    for part, lemmas in parts_of(pairs).items():
        for lemma in lemmas:
            for form in regular_forms(lemma, part):
                if form != lemma:
                    forms.add((form, lemma))
    for part in PARTS:
        with open(f"{WORDNET}/{part}.exc", encoding="latin-1") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[1] in words and "_" not in fields[0]:
                    forms.add((fields[0], fields[1]))
    sys.stdout.write(LICENCE)
    sys.stdout.write("# Pairs of opposites, then irregular forms (form -> lemma).\n")
    for a, b in sorted(pairs):
        print(a, b)
    for form, lemma in sorted(forms):
        print(form, "->", lemma)


if __name__ == "__main__":
    main()
