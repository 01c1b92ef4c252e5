"""Which systems each scenario runs against, and each scenario's SKUs and phases."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.paid import PAID_SKU, PAID_STOCK, PAID_TOKENS
from bench.runner import PhasePlan

HOT_STOCK = 1_000  # far below demand: a few hundred ms of load sells it out
# The accepted path: stock far above any demand, so every request becomes an order.
ACCEPTED_STOCK = 100_000_000
# Buyers reused in the accepted path's `max-repeat` phase: their tokens are verified once, then
# cached, so against `max` (a new buyer, a new token, per request) it shows what verifying costs.
REPEAT_BUYERS = 1_000
# Closed-loop answers/s to mint buyer tokens for (flashsale's sold-out fast path is the fastest
# thing measured; the others are far slower). Past them requests repeat earlier clicks.
RATE_GUESS = {"flashsale": 25_000.0}
RATE_GUESS_DEFAULT = 12_000.0
MANY_SKUS = 1_000
MANY_STOCK = 100_000  # per SKU: never sells out, so many-skus measures the full accept path
STORM_SKUS = 100
STORM_STOCK = 100  # per SKU: sells out part-way, so retries meet both accepts and sell-outs
SAMPLER_RATE = 20.0  # buyers/s who wait for their decision beside a closed-loop max phase

Stock = dict[str, int]  # SKU -> stock to seed


@dataclass(frozen=True)
class Planned:
    """One system to start for a scenario: its name, committer shards (flashsale) and the NATS
    nodes it runs on (flashsale: 1 = the embedded single node, 3 = a local cluster, R3 streams)."""

    name: str
    shards: int | None = None
    nats_nodes: int = 1


def max_phase_name(connections: int, first: bool) -> str:
    """The closed-loop maximum at `connections`: `max` for the run's first count, `max-c256` ..."""
    return "max" if first else f"max-c{connections}"


def is_max(phase: str) -> bool:
    """A closed-loop maximum with new buyers (not `max-repeat`): open loops run at F x the best."""
    return phase == "max" or phase.startswith("max-c")


def plan_systems(scenario: str, args: argparse.Namespace) -> list[Planned]:
    if scenario in ("paid", "drop"):
        # The baselines have no payment path and no draw: flashsale only.
        return [Planned("flashsale", args.hot_shards)] if "flashsale" in args.systems else []
    return [planned for name, shards in _systems(scenario, args)
            for planned in ([Planned(name, shards, nodes) for nodes in args.nats_cluster]
                            if name == "flashsale" else [Planned(name, shards)])]


def _systems(scenario: str, args: argparse.Namespace) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for name in args.systems:
        if name == "echo" and scenario not in ("hot-sku", "accepted"):
            continue  # echo keeps no state: only its HTTP limit on the headline scenarios means anything
        if name in ("rowlock", "redis-always", "redis-everysec") and args.quick and scenario not in (
                "hot-sku", "accepted"):
            continue  # quick mode: keep it short
        if name == "flashsale":
            for shards in (args.shards if scenario == "many-skus" else [args.hot_shards]):
                out.append((name, shards))
        else:
            out.append((name, None))
    return out


def phases_for(scenario: str, system: str, args: argparse.Namespace) -> tuple[Stock, list[PhasePlan]]:
    """(stock by SKU to seed, phases). Each hot-sku phase gets its own fresh hot SKU, so every
    phase starts with stock to sell and then sells out."""
    if scenario == "accepted":
        return _accepted(system, args)
    if scenario == "hot-sku":
        return _hot_sku(system, args)
    if scenario == "many-skus":
        return _many_skus(system, args)
    if scenario == "paid":
        # Every buyer waits for the decision (`reserved`); the payment outcome comes from the DB.
        return {PAID_SKU: PAID_STOCK}, [PhasePlan("paid", "open", [PAID_SKU], args.duration_s,
                                                  rate=args.paid_rate, wait_every=1,
                                                  payment_tokens=PAID_TOKENS)]
    skus = [f"storm-{i:03d}" for i in range(STORM_SKUS)]
    return {s: STORM_STOCK for s in skus}, [PhasePlan("retry", "retry", skus, args.duration_s,
                                                      connections=64, rate_guess=_rate_guess(system))]


def _accepted(system: str, args: argparse.Namespace) -> tuple[Stock, list[PhasePlan]]:
    # One hot SKU per phase that never sells out, a new buyer per request: every request
    # becomes an order, so this is the accepted path (publish + fsync, decide, commit).
    # SKUs: one per open phase (acc-1 ...), then max-repeat's, then one per connection count.
    n_skus = 2 + len(args.fractions)
    stock = {f"acc-{i}": ACCEPTED_STOCK for i in range(n_skus + len(args.connections) - 1)}
    plans = [_max_phase(["acc-0"], system, args, repeat_buyers=_echo_pool(system))]
    plans += [_max_phase([f"acc-{n_skus + i}"], system, args, repeat_buyers=_echo_pool(system),
                         connections=c)
              for i, c in enumerate(args.connections[1:])]
    if system == "flashsale":
        plans.append(PhasePlan("max-repeat", "closed", [f"acc-{n_skus - 1}"], args.duration_s,
                               connections=args.connections[0], sampler_rate=_sampler_rate(system),
                               use_wrk=args.generator == "wrk", repeat_buyers=REPEAT_BUYERS))
    # The open loops follow the best max, which the most connections are likely to reach.
    return stock, plans + _open_phases("acc", system, args, max(args.connections))


def _hot_sku(system: str, args: argparse.Namespace) -> tuple[Stock, list[PhasePlan]]:
    stock = {f"hot-{i}": HOT_STOCK for i in range(1 + len(args.fractions))}
    plans = [_max_phase(["hot-0"], system, args, repeat_buyers=_echo_pool(system))]
    return stock, plans + _open_phases("hot", system, args, args.connections[0])


def _many_skus(system: str, args: argparse.Namespace) -> tuple[Stock, list[PhasePlan]]:
    skus = [f"m-{i:04d}" for i in range(MANY_SKUS)]
    # open@0.8 here measures decisions on the full accept path (publish, commit, result),
    # where hot-sku's open phases are mostly answered by the sold-out fast path.
    return ({s: MANY_STOCK for s in skus},
            [_max_phase(skus, system, args), PhasePlan("open@0.8", "open", skus, args.duration_s)])


def _max_phase(skus: list[str], system: str, args: argparse.Namespace, repeat_buyers: int = 0,
               connections: int | None = None) -> PhasePlan:
    """The closed loop at `connections` (default: the run's first count, phase `max`)."""
    first = args.connections[0]
    c = first if connections is None else connections
    return PhasePlan(max_phase_name(c, connections is None), "closed", skus, args.duration_s, connections=c,
                     sampler_rate=_sampler_rate(system), use_wrk=args.generator == "wrk",
                     rate_guess=_rate_guess(system), repeat_buyers=repeat_buyers)


def _open_phases(prefix: str, system: str, args: argparse.Namespace,
                 connections: int = 64) -> list[PhasePlan]:
    """One open-loop phase per fraction of the max, each on its own SKU `<prefix>-1`, `-2`, ...;
    `connections`: those of the closed loop whose max they follow (the generators open as many)."""
    # echo decides nothing: no request of its open-loop phases waits for a decision.
    wait_every = 0 if system == "echo" else 10
    # Only flashsale has event streams: every 10th of its requests (between the long-polled
    # ones) is followed on its stream to the decision, as a buyer's app would.
    stream_every = 10 if system == "flashsale" else 0
    return [PhasePlan(f"open@{f:g}", "open", [f"{prefix}-{i + 1}"], args.duration_s,
                      wait_every=wait_every, stream_every=stream_every, connections=connections,
                      repeat_buyers=_echo_pool(system))
            for i, f in enumerate(args.fractions)]


def _sampler_rate(system: str) -> float:
    return 0.0 if system == "echo" else SAMPLER_RATE


def _rate_guess(system: str) -> float:
    return RATE_GUESS.get(system, RATE_GUESS_DEFAULT)


def _echo_pool(system: str) -> int:
    # echo verifies nothing: a small pool of tokens, reused, sends the same bytes.
    return REPEAT_BUYERS if system == "echo" else 0
