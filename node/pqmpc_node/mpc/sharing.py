"""Secret sharing math, usable outside MPC: additive n-of-n and Shamir t-of-n.

* :class:`AdditiveScheme`: ``x = sum_i x_i`` over the ring or the field; all n shares
  are needed (dishonest majority).
* :class:`ShamirScheme`: ``x_i = f(i + 1)`` for a random polynomial ``f`` of degree t with
  ``f(0) = x`` over F_p [Shamir79]; any t + 1 shares recombine by Lagrange interpolation
  at 0, so up to ``n - (t + 1)`` parties may be missing (honest majority: ``2t < n``).

Party indices are 0-based; Shamir evaluation points are ``party + 1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.field import P61, MersenneField61
from pqmpc_node.mpc.randomness import RandomSource

__all__ = ["AdditiveScheme", "ShamirScheme", "SharingScheme", "MissingSharesError", "InconsistentSharesError"]


class MissingSharesError(ValueError):
    """Too few shares to recombine."""


class InconsistentSharesError(ValueError):
    """Shares do not lie on one polynomial of the scheme's degree."""


def _random(domain: Domain, shape: tuple[int, ...], rng: RandomSource) -> Array:
    count = 1
    for d in shape:
        count *= d
    return domain.from_words(domain.xp.asarray(rng.words(count)).reshape(shape))


@dataclass(frozen=True)
class AdditiveScheme:
    """n-of-n additive sharing."""

    n: int
    kind: Literal["additive"] = "additive"

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"additive sharing needs at least 2 parties, got {self.n}")

    @property
    def threshold(self) -> int:
        """Number of shares minus one that reveal nothing (n - 1)."""
        return self.n - 1

    def holds_constants(self, party: int) -> bool:
        """Whether ``party`` adds public constants to its share (party 0 only)."""
        return party == 0

    def share(self, domain: Domain, values: Array, rng: RandomSource) -> list[Array]:
        """Split ``values`` into n additive shares."""
        shares = [_random(domain, tuple(values.shape), rng) for _ in range(self.n - 1)]
        last = values
        for s in shares:
            last = domain.sub(last, s)
        return [last, *shares]

    def reconstruct(self, domain: Domain, shares: Mapping[int, Array]) -> Array:
        """Sum of all n shares."""
        missing = sorted(set(range(self.n)) - set(shares))
        if missing:
            raise MissingSharesError(f"additive sharing needs all {self.n} shares; missing parties {missing}")
        total = domain.add(shares[0], shares[1])  # a fresh array; the rest accumulate in place
        for i in range(2, self.n):
            total = domain.iadd(total, shares[i])
        return total

    def weights(self, parties: Sequence[int]) -> dict[int, int]:
        """Recombination weights (all 1)."""
        return {p: 1 for p in parties}


@dataclass(frozen=True)
class ShamirScheme:
    """t-of-n Shamir sharing over F_p (p = 2^61 - 1), evaluation points 1..n."""

    n: int
    t: int
    kind: Literal["shamir"] = "shamir"

    def __post_init__(self) -> None:
        if self.n < 2 or not 0 < self.t < self.n:
            raise ValueError(f"Shamir sharing needs n >= 2 and 0 < t < n, got n={self.n}, t={self.t}")

    @property
    def threshold(self) -> int:
        return self.t

    @property
    def honest_majority(self) -> bool:
        """Beaver-based multiplication and robust opening assume 2t < n."""
        return 2 * self.t < self.n

    def holds_constants(self, party: int) -> bool:
        """Every party adds public constants (the constant polynomial)."""
        return True

    @staticmethod
    def _field(domain: Domain) -> MersenneField61:
        if not isinstance(domain, MersenneField61):
            raise ValueError("Shamir sharing needs the prime field (MersenneField61), not the ring")
        return domain

    def share(self, domain: Domain, values: Array, rng: RandomSource) -> list[Array]:
        """Evaluate a random degree-t polynomial with constant term ``values`` at 1..n."""
        self._field(domain)
        coeffs = [_random(domain, tuple(values.shape), rng) for _ in range(self.t)]
        return [self.evaluate(domain, values, coeffs, party) for party in range(self.n)]

    def evaluate(self, domain: Domain, constant: Array, coeffs: Sequence[Array], party: int) -> Array:
        """``f(party + 1)`` for ``f = constant + sum_d coeffs[d-1] X^d`` (Horner)."""
        x = domain.scalar(party + 1)
        acc = domain.zeros(tuple(constant.shape))
        for c in reversed(coeffs):
            acc = domain.mul(domain.add(acc, c), x)
        return domain.add(acc, constant)

    def weights(self, parties: Sequence[int]) -> dict[int, int]:
        """Lagrange coefficients at 0 for the evaluation points of ``parties``."""
        xs = [p + 1 for p in parties]
        out: dict[int, int] = {}
        for p, xi in zip(parties, xs, strict=True):
            num, den = 1, 1
            for xj in xs:
                if xj != xi:
                    num = num * (-xj) % P61
                    den = den * (xi - xj) % P61
            out[p] = num * pow(den, -1, P61) % P61
        return out

    def reconstruct(self, domain: Domain, shares: Mapping[int, Array], *, check: bool = False) -> Array:
        """Recombine from any t+1 (or more) shares; ``check`` verifies all given shares agree."""
        field = self._field(domain)
        parties = sorted(shares)
        if len(parties) < self.t + 1:
            raise MissingSharesError(
                f"Shamir t={self.t} needs {self.t + 1} shares, got {len(parties)} (parties {parties}); "
                f"at most {self.n - self.t - 1} of {self.n} parties may be missing"
            )
        base = parties[: self.t + 1]
        value = self._interpolate(field, shares, base, 0)
        if check:
            for extra in parties[self.t + 1 :]:
                predicted = self._interpolate(field, shares, base, extra + 1)
                if not bool(domain.xp.all(predicted == shares[extra])):
                    raise InconsistentSharesError(
                        f"share of party {extra} is not on the degree-{self.t} polynomial of parties {base}"
                    )
        return value

    def _interpolate(self, field: MersenneField61, shares: Mapping[int, Array], base: Sequence[int], at: int) -> Array:
        """``f(at)`` from the shares of ``base`` (Lagrange). One lazily reduced sum of products by
        constants: at n = 3 the coefficients at 0 are small integers (2, -1 and 3, -3, 1), which
        the field multiplies without a 61-bit split."""
        xs = [p + 1 for p in base]
        coeffs: list[int] = []
        for xi in xs:
            num, den = 1, 1
            for xj in xs:
                if xj != xi:
                    num = num * (at - xj) % P61
                    den = den * (xi - xj) % P61
            coeffs.append(num * pow(den, -1, P61) % P61)
        return field.lincomb(coeffs, [shares[p] for p in base])


SharingScheme = AdditiveScheme | ShamirScheme


