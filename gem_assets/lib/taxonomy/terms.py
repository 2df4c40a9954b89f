"""Terms of a document for naming domains: tokenization, stop words, vocabulary, document-term matrices.

Tokenization (used by GIS, c-TF-IDF and the NPMI coherence alike, so the comparison is on one
vocabulary):

1. lower-case; typographic apostrophes become ``'``;
2. tokens are runs of word characters (``\\w+``, Unicode letters and digits) joined by inner
   apostrophes; every other non-space character is a *break*;
3. a trailing possessive ``'s`` is dropped (``world's`` -> ``world``);
4. a token is a *unigram term* when it has at least 2 characters, no digit, no underscore and is not
   a stop word (:data:`STOP_WORDS`); other tokens are dropped and also break bigrams;
5. a *bigram term* is two unigram terms adjacent in the text (no break, dropped token or stop word
   between them), joined by one space: ``"bank of england"`` gives no bigram, ``"interest rates"``
   gives ``"interest rates"``.

Numbers (any token with a digit) therefore never become terms, and stop words never start, end or
sit inside a term. Rare terms are left out by the vocabulary's minimum document frequency
(:func:`select_vocabulary`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["STOP_WORDS", "document_terms", "count_document_frequency", "BoundedDocumentFrequency",
           "select_vocabulary", "term_matrix", "is_valid_term"]

#: English stop words shipped with the package (no download): function words, pronouns,
#: auxiliaries and their contractions, and very common adverbs (301 entries).
STOP_WORDS: frozenset[str] = frozenset("""
a about above across after afterwards again against ago all almost alone along already also although always am
among amongst an and another any anybody anyhow anyone anything anyway anywhere are aren't around as at back be
became because become becomes becoming been before beforehand behind being below beside besides between beyond
both but by can can't cannot could couldn't did didn't do does doesn't doing don't done down during each eg
either else elsewhere enough etc even ever every everyone everything everywhere except few for former formerly
from further had hadn't has hasn't have haven't having he he'd he'll he's hence her here here's hers herself him
himself his how however i i'd i'll i'm i've ie if in indeed instead into is isn't it it's its itself just least
less let let's may maybe me meanwhile might mine more moreover most mostly much must mustn't my myself namely
neither never nevertheless next no nobody none noone nor not nothing now nowhere of off often on once one's only
onto or other others otherwise ought our ours ourselves out over own per perhaps please quite rather really same
shall shan't she she'd she'll she's should shouldn't since so some somehow someone something sometime sometimes
somewhere still such than that that's the their theirs them themselves then thence there there's thereafter
thereby therefore therein thereupon these they they'd they'll they're they've this those though through
throughout thus to together too toward towards under until unless up upon us very via was wasn't we we'd we'll
we're we've were weren't what what's whatever when whence whenever where where's whereas whereby wherein
whereupon wherever whether which while whither who who's whoever whole whom whose why will with within without
won't would wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves
""".split())

_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def is_valid_term(token: str) -> bool:
    """Whether a token can be a unigram term: >= 2 characters, letters only (no digit or ``_``),
    not a stop word."""
    return len(token) >= 2 and token.isalpha() and token not in STOP_WORDS


def document_terms(text: str, bigrams: bool = True) -> list[str]:
    """The terms of one document in text order (with repetitions).

    Parameters
    ----------
    text : str
        The document.
    bigrams : bool
        Also return bigram terms (after the unigrams).

    Returns
    -------
    list of str
        Unigram terms, then bigram terms (see the module docstring for the rules).
    """
    if not isinstance(text, str):
        raise ValueError(f"a document must be a str, got {type(text).__name__}")
    unigrams: list[str] = []
    pairs: list[str] = []
    prev: str | None = None  # the previous unigram term, when nothing broke adjacency since
    for tok in _TOKEN.findall(text.lower().replace("\u2019", "'").replace("\u2018", "'")):
        if tok.endswith("'s"):
            tok = tok[:-2]
        if is_valid_term(tok):  # contractions ("don't") are not alphabetic: dropped, like stop words
            unigrams.append(tok)
            if bigrams and prev is not None:
                pairs.append(prev + " " + tok)
            prev = tok
        else:
            prev = None
    return unigrams + pairs


def count_document_frequency(texts: Iterable[str], counter: Counter | None = None,
                             bigrams: bool = True) -> Counter:
    """Add each term's document frequency (number of texts containing it) to ``counter``.

    Parameters
    ----------
    texts : iterable of str
        Documents.
    counter : Counter, optional
        Accumulator (a new one by default), so that shards can be streamed through it.
    bigrams : bool
        Count bigram terms too.

    Returns
    -------
    Counter
        Term -> number of documents containing it.
    """
    counter = Counter() if counter is None else counter
    for text in texts:
        counter.update(set(document_terms(text, bigrams)))
    return counter


class BoundedDocumentFrequency:
    """Document frequencies of the most frequent terms, in memory bounded by ``capacity`` terms.

    An exact :class:`collections.Counter` of every term grows with the corpus (most bigrams are
    seen once, and a larger corpus keeps bringing new ones). This counter holds at most
    ``capacity`` terms after each document: when a document's terms would take it past the
    capacity, it is *pruned* to the ``capacity // 2`` terms of highest count (ties: the
    alphabetically first), the rest are forgotten. A forgotten term seen again starts from 0.

    This is lossy counting with a fixed memory budget (as in Manku & Motwani's lossy counting, but
    pruning by rank instead of by a frequency threshold, so memory is fixed in advance instead of
    growing as ``log(eps N) / eps``). Guarantees:

    - every count is a lower bound of the term's true document frequency, and the true frequency
      is at most ``count + error_bound``, where :attr:`error_bound` is the sum, over the prunes, of
      the highest count forgotten at each (a term loses at most that much per prune);
    - while no prune happened (``capacity`` at least the number of distinct terms) the counts are
      exact and equal to :func:`count_document_frequency`'s.

    What it costs: the terms near the cut of a vocabulary chosen from these counts may differ from
    the exact choice (a term of middling frequency can be forgotten at a prune and counted again
    from 0); the most frequent terms, which name the domains, are kept. Each prune sorts the held
    terms (``O(capacity log capacity)``), once per ``capacity // 2`` new terms.

    Parameters
    ----------
    capacity : int or None
        Most terms held between documents (>= 2); ``None``: unbounded (exact, an ordinary Counter).
    bigrams : bool
        Count bigram terms too.

    Attributes
    ----------
    counts : Counter
        Term -> counted documents (a lower bound of its document frequency).
    n_documents : int
        Documents counted.
    prunes : int
        Prunes done.
    error_bound : int
        Largest possible undercount of any term (0 while no prune happened).
    forgotten : int
        Term entries dropped by the prunes (a term dropped twice counts twice).
    peak_terms : int
        Most terms held after any document (never above ``capacity``).
    """

    def __init__(self, capacity: int | None = None, bigrams: bool = True) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer))
                                     or capacity < 2):
            raise ValueError(f"capacity must be an integer >= 2 (terms held while counting) or None, got {capacity!r}")
        self.capacity = None if capacity is None else int(capacity)
        self.bigrams = bool(bigrams)
        self.counts: Counter = Counter()
        self.n_documents = 0
        self.prunes = 0
        self.error_bound = 0
        self.forgotten = 0
        self.peak_terms = 0

    @property
    def exact(self) -> bool:
        """Whether every count is exact (no prune happened)."""
        return self.prunes == 0

    def _prune(self, keep: int) -> None:
        if len(self.counts) <= keep:
            return
        ranked = sorted(self.counts.items(), key=lambda tc: (-tc[1], tc[0]))
        dropped = ranked[keep:]
        self.error_bound += int(dropped[0][1])
        self.forgotten += len(dropped)
        self.prunes += 1
        self.counts = Counter(dict(ranked[:keep]))

    def update(self, texts: Iterable[str]) -> "BoundedDocumentFrequency":
        """Count the documents of ``texts`` (each term once per document); returns ``self``."""
        cap = self.capacity
        for text in texts:
            terms = set(document_terms(text, self.bigrams))
            self.counts.update(terms)
            self.n_documents += 1
            if cap is not None and len(self.counts) > cap:
                # this document's new terms survive only if they rank in the top half
                self._prune(cap // 2)
            self.peak_terms = max(self.peak_terms, len(self.counts))
        return self


def select_vocabulary(document_frequency: Mapping[str, int], *, min_df: int = 5,
                      max_terms: int | None = 50_000) -> list[str]:
    """The terms kept for naming: document frequency >= ``min_df``, the ``max_terms`` most frequent.

    Parameters
    ----------
    document_frequency : mapping of str to int
        From :func:`count_document_frequency`.
    min_df : int
        Minimum number of documents a term must occur in (rare terms are unreliable names).
    max_terms : int or None
        Keep at most this many terms (highest document frequency first; ties by term).

    Returns
    -------
    list of str
        The vocabulary, by decreasing document frequency then alphabetically.

    Raises
    ------
    ValueError
        If ``min_df < 1`` or ``max_terms < 1``.
    """
    if isinstance(min_df, bool) or not isinstance(min_df, (int, np.integer)) or min_df < 1:
        raise ValueError(f"min_df must be an integer >= 1 (documents), got {min_df!r}")
    if max_terms is not None and (isinstance(max_terms, bool) or not isinstance(max_terms, (int, np.integer))
                                  or max_terms < 1):
        raise ValueError(f"max_terms must be an integer >= 1 or None, got {max_terms!r}")
    kept = sorted(((t, c) for t, c in document_frequency.items() if c >= min_df), key=lambda tc: (-tc[1], tc[0]))
    if max_terms is not None:
        kept = kept[:max_terms]
    return [t for t, _ in kept]


def term_matrix(texts: Sequence[str], index: Mapping[str, int], bigrams: bool = True):
    """Term counts of each document over a fixed vocabulary, as a CSR matrix.

    Parameters
    ----------
    texts : sequence of str
        Documents.
    index : mapping of str to int
        Term -> column; terms outside it are ignored.
    bigrams : bool
        Count bigram terms too.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (len(texts), len(index)), int64
        Number of occurrences of each term in each document.
    """
    import scipy.sparse as sp

    indptr = [0]
    cols: list[int] = []
    for text in texts:
        cols.extend(j for j in (index.get(t) for t in document_terms(text, bigrams)) if j is not None)
        indptr.append(len(cols))
    data = np.ones(len(cols), dtype=np.int64)
    m = sp.csr_matrix((data, np.asarray(cols, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
                      shape=(len(texts), len(index)))
    m.sum_duplicates()
    return m
