"""The mixture evaluation: bucketizations, target models, the paired experiment and its reports."""
