"""Measures: what every layer above computes from masks, knowing nothing of models, training or
reports. Clinical measures (:mod:`.clinical`: names, units, ranges, wall thickness), overlap and
surface metrics (:mod:`.metrics`), topology (:mod:`.topology`) and the protocol's slice levels
(:mod:`.levels`)."""
