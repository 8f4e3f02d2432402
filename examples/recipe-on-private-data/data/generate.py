#!/usr/bin/env python3
"""Writes the example's private data: support tickets of a small web shop, each routed to one team.

Deterministic (seeded), standard library only. Run from anywhere: it writes next to itself
  train_chat.jsonl   {"messages": [user: ticket, assistant: team]}             (chat_template)
  train_alpaca.jsonl {"instruction", "input": ticket, "output": team}           (alpaca)
  test_chat.jsonl / test_alpaca.jsonl: held-out tickets (no sentence of the training files)
"""
import json
import os
import random

TEAMS = {
    "billing": ["my invoice shows the wrong amount", "i was charged twice this month", "please refund my last payment",
                "the card payment failed again", "why did my subscription price go up", "i need a copy of my receipt",
                "the discount code was not applied", "cancel the automatic renewal charge"],
    "shipping": ["my parcel has not arrived yet", "the tracking number does not work", "the box came damaged",
                 "can you ship to another address", "the courier left my order at the wrong door",
                 "how long does delivery to norway take", "one item is missing from the package",
                 "the order is stuck in customs"],
    "account": ["i cannot log in to my account", "please reset my password", "change the email on my profile",
                "delete my account and my data", "the login code never reaches my phone",
                "someone else used my account", "merge my two customer accounts", "update my phone number please"],
    "technical": ["the app crashes when i open the cart", "the checkout page shows an error",
                  "images do not load on the product page", "the search returns nothing",
                  "the website is very slow today", "the android app will not install",
                  "the wishlist button does nothing", "the page is blank in firefox"],
}
OPENERS = ["", "hello, ", "hi team, ", "good morning. ", "urgent: ", "sorry to bother you, "]
CLOSERS = ["", " thanks", " please help", " what can i do?", " this is the second time", " regards, sam"]
INSTRUCTION = "Route this ticket to a team."


def main():
    rng = random.Random(13)
    tickets = [(o + s + c, team) for team, sents in TEAMS.items() for s in sents for o in OPENERS for c in CLOSERS]
    rng.shuffle(tickets)
    # Held out: whole sentences the training files never contain (2 per team), in every wording.
    held = {sents[i] for sents in TEAMS.values() for i in (3, 6)}
    test = [t for t in tickets if any(h in t[0] for h in held)]
    train = [t for t in tickets if not any(h in t[0] for h in held)]
    here = os.path.dirname(os.path.abspath(__file__))

    def chat(t):
        return {"messages": [{"role": "user", "content": t[0]},
                             {"role": "assistant", "content": t[1]}]}

    def alpaca(t):
        return {"instruction": INSTRUCTION, "input": t[0], "output": t[1]}

    def write(name, rows):
        with open(os.path.join(here, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    half = len(train) // 2
    write("train_chat.jsonl", [chat(t) for t in train[:half]])
    write("train_alpaca.jsonl", [alpaca(t) for t in train[half:]])
    write("test_chat.jsonl", [chat(t) for t in test[:40]])
    write("test_alpaca.jsonl", [alpaca(t) for t in test[40:80]])


if __name__ == "__main__":
    main()
