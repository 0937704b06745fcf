"""Dealer-free preprocessing for dishonest-majority (additive) sessions, from oblivious transfer.

* :mod:`.base` — base OTs from ML-KEM-768 (Masny-Rindal endemic OT, CCS 2019);
* :mod:`.extension` — IKNP OT extension with the KOS consistency check;
* :mod:`.provider` — Gilboa products, MASCOT MACs and sacrifice: the ``ot`` provider.
"""
