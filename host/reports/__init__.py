"""What a person reads: HTML report pages (:mod:`.page`) and the figures in them (:mod:`.plots`)."""
