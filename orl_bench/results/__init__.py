"""Result records, the paper's reference numbers, tables and figures."""
