"""SimKGC's InfoNCE with its negatives, and PMD's distillation losses."""
