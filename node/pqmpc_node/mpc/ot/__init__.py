"""Dealer-free preprocessing for dishonest-majority (additive) sessions, from oblivious transfer.

* :mod:`.base` — base OTs from ML-KEM-768 (Masny-Rindal endemic OT, CCS 2019);
* :mod:`.extension` — IKNP OT extension with the KOS consistency check (re-proved in
  SoftSpokenOT), over :mod:`.bits` (bit-matrix transpose), :mod:`.ghash` (the check's
  polynomial hash) and :mod:`.tccr` (the correlation-robust output hash);
* :mod:`.gilboa` — Gilboa's OLE and MASCOT's COPE from random OTs;
* :mod:`.provider` — MASCOT triples, MACs and sacrifice, bits, masks: the ``ot`` provider.
"""
