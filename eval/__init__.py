"""clipneg.eval: compositionality benchmarks with the official protocols, one shared scorer, results and reports.

Modules (import what you use; this package imports nothing heavy):
  items         Item / ImageRef: K images x L captions, positive first
  scorer        Scorer (encode each unique image and text once, batched), tie policies (strict / first / random)
  sugarcrepe    SugarCrepe (7 subsets; per subset, REPLACE/SWAP/ADD micro, 7-subset macro)
  aro           ARO VG-Relation (minus 157 symmetric relations) and VG-Attribution (pairs with >= 25 items)
  order         ARO COCO-Order and Flickr30k-Order (4 spaCy perturbations, seeds, masking)
  sugarcrepe_pp, winoground, valse, zeroshot, retrieval
  results       one JSON per (model, benchmark); report: tables and plots; download: `clipneg data download`
  command       `clipneg eval`, `clipneg report`, `clipneg data`
"""
