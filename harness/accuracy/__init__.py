"""Accuracy stage: Revisited Oxford / Paris retrieval, exactly the revisitop protocol."""
