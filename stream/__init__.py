"""The stream processor (faust): keeps label-dependent features and the history current."""
