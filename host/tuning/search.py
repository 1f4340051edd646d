"""Searchers over a discrete parameter space: a genetic algorithm and coordinate search.

A space maps each parameter name to its candidate values, in order (numeric parameters
ascending, so that "a neighbouring value" means something). An objective maps a point
(``{name: value}``) to a number to minimise; it is called once per distinct point (the
searchers memoise), and :attr:`SearchResult.evaluations` counts those calls, which is the
cost that matters when each one runs a chip.

``genetic``
    OpenCIMTC's searcher for integration time, input mode and weight copies (Yu et al.,
    Nat. Commun. 2025): a population of points, tournament selection, uniform crossover,
    mutation that steps a gene to a neighbouring value or redraws it, and elitism.
``coordinate``
    The cheaper one: from a start point, optimise one parameter at a time over its values
    (or those within ``radius`` steps of the current one), and sweep until a whole pass
    changes nothing. It suits these objectives, whose parameters interact weakly (the ADC
    gain and the input range trade against each other, and a second sweep settles that).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cimstack.errors import ConfigError

__all__ = ["SearchResult", "genetic", "coordinate", "SEARCHERS"]

Space = dict[str, Sequence]


@dataclass
class SearchResult:
    best: dict
    value: float
    evaluations: int
    trace: list[float] = field(default_factory=list)     # best value after each evaluation


class _Memo:
    """Objective over index tuples, memoised, tracking the best point."""

    def __init__(self, space: Space, objective: Callable[[dict], float], budget: int | None):
        if not space or any(len(v) == 0 for v in space.values()):
            raise ConfigError("a search space needs at least one parameter with at least one value")
        self.names = list(space)
        self.values = [list(space[n]) for n in self.names]
        self.objective, self.budget = objective, budget
        self.seen: dict[tuple, float] = {}
        self.best: tuple[float, tuple] = (math.inf, ())
        self.trace: list[float] = []

    def point(self, idx: tuple) -> dict:
        return {n: v[i] for n, v, i in zip(self.names, self.values, idx)}

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and len(self.seen) >= self.budget

    def __call__(self, idx: tuple) -> float:
        if idx not in self.seen:
            if self.exhausted:
                return math.inf
            v = float(self.objective(self.point(idx)))
            self.seen[idx] = v if math.isfinite(v) else math.inf
            if self.seen[idx] < self.best[0]:
                self.best = (self.seen[idx], idx)
            self.trace.append(self.best[0])
        return self.seen[idx]

    def index_of(self, start: dict | None) -> tuple | None:
        if start is None:
            return None
        try:
            return tuple(v.index(start[n]) for n, v in zip(self.names, self.values))
        except (KeyError, ValueError):
            raise ConfigError(f"start point {start} is not in the search space") from None

    def result(self) -> SearchResult:
        return SearchResult(self.point(self.best[1]), self.best[0], len(self.seen), self.trace)


def genetic(space: Space, objective: Callable[[dict], float], *, start: dict | None = None, population: int = 16,
            generations: int = 10, crossover: float = 0.9, mutation: float = 0.3, elite: int = 2,
            tournament: int = 3, budget: int | None = None, seed: int = 0) -> SearchResult:
    """Minimise ``objective`` over ``space`` with a genetic algorithm (module docstring).

    ``start`` joins the first generation (the untuned point, so the result is never worse).
    """
    if population < 2 or generations < 1 or not 0 <= elite < population:
        raise ConfigError(f"genetic search needs population >= 2, generations >= 1 and 0 <= elite < population "
                          f"(got {population}, {generations}, {elite})")
    f = _Memo(space, objective, budget)
    rng = np.random.default_rng(seed)
    sizes = [len(v) for v in f.values]

    def random_point() -> tuple:
        return tuple(int(rng.integers(n)) for n in sizes)

    def mutate(idx: tuple) -> tuple:
        out = list(idx)
        for k, n in enumerate(sizes):
            if n > 1 and rng.random() < mutation:
                if rng.random() < 0.7:                    # a step to a neighbour
                    out[k] = int(np.clip(out[k] + rng.choice([-2, -1, 1, 2]), 0, n - 1))
                else:                                     # or anywhere
                    out[k] = int(rng.integers(n))
        return tuple(out)

    first = f.index_of(start)
    pop = ([first] if first is not None else []) + [random_point() for _ in range(population)]
    pop = pop[:population]
    for _ in range(generations):
        scored = sorted(pop, key=f)
        if f.exhausted:
            break
        nxt = scored[:elite]
        while len(nxt) < population:
            a, b = (min((pop[int(i)] for i in rng.integers(len(pop), size=tournament)), key=f) for _ in range(2))
            child = tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b)) if rng.random() < crossover else a
            nxt.append(mutate(child))
        pop = nxt
    for idx in pop:
        f(idx)
    return f.result()


def coordinate(space: Space, objective: Callable[[dict], float], *, start: dict | None = None,
               sweeps: int = 4, radius: int | None = None, budget: int | None = None, seed: int = 0) -> SearchResult:
    """Minimise ``objective`` one parameter at a time from ``start`` (default: every
    parameter's middle value); ``radius`` limits each move to that many steps."""
    del seed                                  # deterministic; the argument keeps the searchers interchangeable
    f = _Memo(space, objective, budget)
    cur = f.index_of(start) or tuple(len(v) // 2 for v in f.values)
    best = f(cur)
    for _ in range(sweeps):
        moved = False
        for k, vals in enumerate(f.values):
            lo, hi = (0, len(vals)) if radius is None else (max(0, cur[k] - radius), min(len(vals), cur[k] + radius + 1))
            for i in range(lo, hi):
                cand = cur[:k] + (i,) + cur[k + 1:]
                v = f(cand)
                if v < best:
                    best, cur, moved = v, cand, True
            if f.exhausted:
                break
        if not moved or f.exhausted:
            break
    return f.result()


SEARCHERS = {"genetic": genetic, "coordinate": coordinate}
