"""The person in the loop: review units a person decides, re-inspection control, sample plans."""
