"""The synthetic demo set: invented species with song templates, field beds of wind, rain and insects,
focal recordings per species and annotated soundscapes (`jibjib make-demo`)."""
