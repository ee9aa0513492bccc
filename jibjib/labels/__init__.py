"""The QC table -> the label index (classes from folder names) and the train/val/test split by
recording, with its ledger; and the checks of the data folder."""
