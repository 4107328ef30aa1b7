use super::test_instruments as t;
use super::*;

fn card(number: &str) -> PaymentMethod {
    PaymentMethod::Card(Card::from_number(number).expect("a valid test card"))
}

fn iban(text: &str) -> PaymentMethod {
    PaymentMethod::SepaDebit(SepaDebit {
        mandate: "M-1".into(),
        iban: Iban::parse(text).expect("a valid test IBAN"),
    })
}

fn request(key: &str, method: PaymentMethod) -> ChargeRequest {
    ChargeRequest {
        key: IdempotencyKey(key.into()),
        invoice_number: "GYR-2026-000001".into(),
        customer: CustomerRef("cus_1".into()),
        amount: MoneyMinor(1234),
        currency: Currency::EUR,
        method,
        gateway: GatewayRefs::default(),
    }
}

#[test]
fn test_cards_decide_the_outcome() {
    let sandbox = Sandbox::new();
    let ok = |o: Result<ChargeOutcome, PaymentError>| matches!(o, Ok(ChargeOutcome::Succeeded { .. }));
    let declined = |o: Result<ChargeOutcome, PaymentError>| match o {
        Ok(ChargeOutcome::Declined { reason }) => Some(reason),
        _ => None,
    };
    assert!(ok(sandbox.charge_now(&request("a", card(t::CARD_SUCCEEDS)))));
    assert!(ok(sandbox.charge_now(&request("b", card(t::CARD_MASTERCARD_SUCCEEDS)))));
    assert!(
        ok(sandbox.charge_now(&request("c", card("378282246310005")))),
        "any other valid number succeeds"
    );
    assert_eq!(
        declined(sandbox.charge_now(&request("d", card(t::CARD_DECLINED)))),
        Some(DeclineReason::CardDeclined)
    );
    assert_eq!(
        declined(sandbox.charge_now(&request("e", card(t::CARD_INSUFFICIENT_FUNDS)))),
        Some(DeclineReason::InsufficientFunds)
    );
    assert_eq!(
        declined(sandbox.charge_now(&request("f", card(t::CARD_EXPIRED)))),
        Some(DeclineReason::ExpiredCard)
    );
    assert!(ok(sandbox.charge_now(&request("g", iban(t::IBAN_SUCCEEDS)))));
    assert_eq!(
        declined(sandbox.charge_now(&request("h", iban(t::IBAN_INSUFFICIENT_FUNDS)))),
        Some(DeclineReason::InsufficientFunds)
    );
    assert_eq!(
        declined(sandbox.charge_now(&request("i", iban(t::IBAN_MANDATE_REFUSED)))),
        Some(DeclineReason::MandateRefused)
    );
    assert_eq!(sandbox.charges().len(), 4);
}

#[test]
fn a_key_is_charged_once_and_answered_with_its_first_outcome() {
    let sandbox = Sandbox::new();
    let first = sandbox.charge_now(&request("k", card(t::CARD_SUCCEEDS))).expect("succeeds");
    let again = sandbox.charge_now(&request("k", card(t::CARD_SUCCEEDS))).expect("succeeds");
    assert_eq!(first, again);
    assert_eq!(sandbox.charges().len(), 1);
    let declined = sandbox.charge_now(&request("d", card(t::CARD_DECLINED))).expect("answers");
    assert_eq!(sandbox.charge_now(&request("d", card(t::CARD_DECLINED))), Ok(declined));
    let mut other = request("k", card(t::CARD_SUCCEEDS));
    other.amount = MoneyMinor(1);
    assert_eq!(sandbox.charge_now(&other), Err(PaymentError::KeyReused));
    assert_eq!(sandbox.charges().len(), 1);
    // Payment ids depend on the key only.
    let elsewhere = Sandbox::new().charge_now(&request("k", card(t::CARD_SUCCEEDS))).expect("succeeds");
    assert_eq!(elsewhere, first);
}

#[test]
fn transient_instruments_fail_then_succeed_without_charging_twice() {
    for method in [card(t::CARD_TRANSIENT), iban(t::IBAN_TRANSIENT)] {
        let sandbox = Sandbox::new();
        let r = request("k", method);
        for _ in 0..t::TRANSIENT_FAILURES {
            assert_eq!(sandbox.charge_now(&r), Err(PaymentError::Transient));
            assert_eq!(sandbox.lookup_now(&r.key), None);
        }
        assert!(matches!(sandbox.charge_now(&r), Ok(ChargeOutcome::Succeeded { .. })));
        assert_eq!(sandbox.charges().len(), 1);
    }
}

#[tokio::test]
async fn a_lost_reply_is_resolved_by_lookup_and_never_charges_twice() {
    let sandbox = Sandbox::new();
    let r = request("k", card(t::CARD_LOST_REPLY));
    assert_eq!(sandbox.charge(&r).await, Err(PaymentError::Unknown));
    let found = sandbox.lookup(&r.key).await.expect("lookup answers");
    assert!(matches!(found, Some(ChargeOutcome::Succeeded { .. })));
    assert_eq!(sandbox.charge(&r).await.ok(), found);
    assert_eq!(sandbox.charges().len(), 1);
    assert_eq!(sandbox.lookup(&IdempotencyKey("never".into())).await, Ok(None));
}

#[test]
fn methods_show_only_what_may_be_shown() {
    let c = Card::from_number("4242 4242 4242 4242").expect("valid");
    assert_eq!((c.brand, c.last4.as_str()), (CardBrand::Visa, "4242"));
    assert_eq!(Card::from_number(t::CARD_MASTERCARD_SUCCEEDS).map(|c| c.brand), Ok(CardBrand::Mastercard));
    assert_eq!(Card::from_number("2223003122003222").map(|c| c.brand), Ok(CardBrand::Mastercard));
    assert_eq!(Card::from_number("378282246310005").map(|c| c.brand), Ok(CardBrand::Amex));
    assert_eq!(Card::from_number("4242424242424241"), Err(MethodError::CardNumber), "Luhn");
    assert_eq!(Card::from_number("4242"), Err(MethodError::CardNumber));
    let i = Iban::parse("de89 3704 0044 0532 0130 00").expect("valid");
    assert_eq!(i.as_str(), "DE89370400440532013000");
    assert_eq!(i.masked(), "DE89**************3000");
    assert_eq!(Iban::parse("DE89370400440532013001"), Err(MethodError::Iban), "check digits");
    assert_eq!(
        Iban::parse("GB82WEST12345698765432").map(|i| i.masked()),
        Ok("GB82**************5432".into())
    );
    assert_eq!(
        card(t::CARD_SUCCEEDS).means(),
        PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() }
    );
    assert_eq!(
        iban(t::IBAN_SUCCEEDS).means(),
        PaymentMeans::SepaDebit { mandate: "M-1".into(), iban_masked: "DE89**************3000".into() }
    );
}

/// Yields a fixed sequence, then repeats the last value.
struct Fixed(Vec<u64>);

impl JitterSource for Fixed {
    fn next_u64(&mut self) -> u64 {
        if 1 < self.0.len() {
            self.0.remove(0)
        } else {
            self.0[0]
        }
    }
}

#[test]
fn backoff_doubles_up_to_the_cap_with_full_jitter_then_dead_letters() {
    let policy = RetryPolicy { base_ms: 100, cap_ms: 1_000, attempts_max: 6 };
    assert_eq!(policy.validate(), Ok(()));
    let ceilings: Vec<u64> = (1..=6).map(|n| policy.ceiling_ms(n)).collect();
    assert_eq!(ceilings, vec![100, 200, 400, 800, 1_000, 1_000]);
    // The extremes of the random source map to 0 and to the ceiling.
    assert_eq!(policy.next_delay(1, &mut Fixed(vec![0])), Retry::After { delay_ms: 0 });
    assert_eq!(policy.next_delay(1, &mut Fixed(vec![100])), Retry::After { delay_ms: 100 });
    assert_eq!(policy.next_delay(3, &mut Fixed(vec![400])), Retry::After { delay_ms: 400 });
    assert_eq!(policy.next_delay(5, &mut Fixed(vec![u64::MAX])), Retry::After { delay_ms: u64::MAX % 1_001 });
    assert_eq!(policy.next_delay(6, &mut Fixed(vec![0])), Retry::DeadLetter);
    assert_eq!(policy.next_delay(7, &mut Fixed(vec![0])), Retry::DeadLetter);
    // No overflow however far the attempts go.
    let huge = RetryPolicy { base_ms: u64::MAX / 2, cap_ms: u64::MAX, attempts_max: PAYMENT_ATTEMPTS_MAX };
    assert_eq!(huge.ceiling_ms(64), u64::MAX);
    assert!(matches!(huge.next_delay(63, &mut SplitMix64(1)), Retry::After { .. }));
    assert_eq!(RetryPolicy { attempts_max: 0, ..policy }.validate(), Err(RetryPolicyError::Attempts));
    assert_eq!(RetryPolicy { base_ms: 2_000, ..policy }.validate(), Err(RetryPolicyError::Base));
}

#[test]
fn jitter_spreads_over_the_whole_range_and_repeats_with_the_seed() {
    let policy = RetryPolicy { base_ms: 1_000, cap_ms: 60_000, attempts_max: 8 };
    let delays = |seed| {
        let mut rng = SplitMix64(seed);
        (0..4_000)
            .map(|_| match policy.next_delay(4, &mut rng) {
                Retry::After { delay_ms } => delay_ms,
                Retry::DeadLetter => unreachable!("attempt 4 of 8"),
            })
            .collect::<Vec<_>>()
    };
    let a = delays(7);
    assert_eq!(a, delays(7));
    assert_ne!(a, delays(8));
    assert!(a.iter().all(|&d| d <= 8_000));
    // Full jitter: every eighth of [0, 8000] is hit, none by more than twice its share.
    let mut buckets = [0u32; 8];
    for d in &a {
        buckets[(*d as usize * 8 / 8_001).min(7)] += 1;
    }
    assert!(buckets.iter().all(|&n| 250 < n && n < 1_000), "{buckets:?}");
}

#[test]
fn books_survive_a_restart_so_a_key_is_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SANDBOX_BOOKS_FILE);
    let first = Sandbox::with_books(&path).unwrap();
    let paid = first.charge_now(&request("k1", card(t::CARD_SUCCEEDS))).unwrap();
    let declined = first.charge_now(&request("k2", card(t::CARD_DECLINED))).unwrap();
    drop(first);
    // A torn last line (a crash while appending) is ignored.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"k3\tGYR"))
        .unwrap();
    let again = Sandbox::with_books(&path).unwrap();
    assert_eq!(again.lookup_now(&IdempotencyKey("k1".into())), Some(paid.clone()));
    assert_eq!(again.charge_now(&request("k1", card(t::CARD_SUCCEEDS))).unwrap(), paid);
    assert_eq!(again.charge_now(&request("k2", card(t::CARD_DECLINED))).unwrap(), declined);
    assert_eq!(
        again.charge_now(&request("k1", card(t::CARD_MASTERCARD_SUCCEEDS))),
        Err(PaymentError::KeyReused)
    );
    assert_eq!(again.charges().len(), 1, "one success, remembered, not repeated");
    let successes = read_books(&path)
        .unwrap()
        .iter()
        .filter(|(l, _)| matches!(l.outcome, ChargeOutcome::Succeeded { .. }))
        .count();
    assert_eq!(successes, 1);
}

#[test]
fn the_sandbox_ignores_gateway_references() {
    let sandbox = Sandbox::new();
    let bare = sandbox.charge_now(&request("k", card(t::CARD_SUCCEEDS))).expect("succeeds");
    let mut saved = request("k", card(t::CARD_SUCCEEDS));
    saved.gateway = GatewayRefs {
        customer: Some(GatewayCustomer("cus_1".into())),
        payment_method: Some(PaymentMethodId("pm_1".into())),
    };
    // The same charge to the sandbox: answered from the first, not a reused key.
    assert_eq!(sandbox.charge_now(&saved), Ok(bare));
    assert_eq!(sandbox.charges().len(), 1);
}
