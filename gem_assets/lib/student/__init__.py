"""The fastText-style student distilled from the teacher."""
