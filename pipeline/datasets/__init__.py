"""The dataset folder (labels.csv + images): the interchange format of labelled images, read,
written and checked in `folder`; `shift` makes a copy under other light, focus and position."""
