"""Knowledge graphs: the documented folder format, the SimKGC and KG-BERT layouts, entity/relation/neighbour text,
token caches and batches."""
